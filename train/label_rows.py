"""Label rows Ultralytics would drop, and label caches that would run code, refused before the first step.

Ultralytics' label check (`verify_image_label`) drops a whole image, with one warning line among many, for
a row whose class id is out of range, negative or fractional, a value that is not a finite number, or a
wrong number of fields. The run then trains without that image and only fails (or not) at the end. Here
every label row of the training (and validation) images goes through the project's one label-line parser
(`datatools.formats.parse_yolo_line`) and each such row is an error naming `file:line`. Coordinates outside
[0, 1] are the dataset validator's call (`dinocache dataset validate`), not repeated here.
"""

from __future__ import annotations

from pathlib import Path

from dinocache.train.context import TrainError

SHOWN = 10  # rows listed in the error; the count covers all


def label_file(image: Path) -> Path:
    """Ultralytics' label path of an image (`.../images/...` -> `.../labels/...`, suffix .txt)."""
    from ultralytics.data.utils import img2label_paths

    return Path(img2label_paths([str(image)])[0])


def bad_rows(images: list[Path], nc: int) -> list[str]:
    """`file:line: reason` for every row Ultralytics would drop its image for."""
    from dinocache.datatools.formats import LabelLineError, parse_yolo_line

    out = []
    for img in images:
        try:
            if img.stat().st_size == 0:  # Ultralytics would report a missing HEIF plugin for it
                out.append(f"{img}: empty file (0 bytes)")
        except OSError as e:
            out.append(f"{img}: cannot read ({e.strerror or e})")
        lf = label_file(img)
        try:
            text = lf.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue  # an image without labels is a background image
        except (OSError, UnicodeDecodeError) as e:
            out.append(f"{lf}: cannot read ({type(e).__name__}: {e})")
            continue
        for ln, raw in enumerate(text.splitlines(), 1):
            parts = raw.split()
            if not parts:
                continue
            try:
                parse_yolo_line(parts, nc)
            except LabelLineError as e:
                if "zero area" in str(e):
                    continue  # Ultralytics keeps such a row; the validator reports it
                out.append(f"{lf}:{ln}: {e}")
    return out


# What Ultralytics' label cache (np.save of a dict of lists, strings and arrays) may reference when unpickled
_CACHE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


def check_label_cache(path: Path) -> None:
    """Ultralytics reads `labels/<split>.cache` with `np.load(allow_pickle=True)`, so a received one could run
    code. Unpickle it here with an allow-list of numpy's array globals first (nothing else is ever called)
    and refuse, naming the file, one that references anything more; a corrupt one is Ultralytics' to rebuild."""
    import pickle

    from numpy.lib import format as npf

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):  # noqa: ANN202 - pickle's hook
            if (module, name) not in _CACHE_GLOBALS:
                raise pickle.UnpicklingError(f"references {module}.{name}")
            return super().find_class(module, name)

    try:
        with open(path, "rb") as f:
            ver = npf.read_magic(f)
            _, _, dtype = npf.read_array_header_1_0(f) if ver == (1, 0) else npf.read_array_header_2_0(f)
            if dtype.hasobject:
                Restricted(f).load()
    except pickle.UnpicklingError as e:
        raise TrainError(
            f"{path}: Ultralytics' label cache {e}, so loading it could run code; delete it (Ultralytics "
            "rebuilds it from the label files) and only train on label caches you made"
        ) from None
    except (OSError, ValueError, EOFError):
        return  # not a readable cache: Ultralytics rebuilds it


def check_label_rows(data_yaml: str | Path) -> None:
    """TrainError listing (up to SHOWN) `file:line` rows of the train/val labels that Ultralytics would drop."""
    from dinocache.core.data import load_data_yaml, split_images

    info = load_data_yaml(data_yaml)
    nc = len(info["names"])
    rows: list[str] = []
    for split in ("train", "val"):
        if info.get(split):
            images = split_images(info, split)
            if images:
                cache = label_file(images[0]).parent.with_suffix(".cache")  # Ultralytics' cache_path
                if cache.is_file():
                    check_label_cache(cache)
            rows += bad_rows(images, nc)
    if rows:
        shown = "\n  ".join(rows[:SHOWN]) + (
            f"\n  ... and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
        )
        raise TrainError(
            f"{len(rows)} image(s) or label row(s) that Ultralytics would silently drop (classes 0-{nc - 1}):\n"
            f"  {shown}\nfix them (`dinocache dataset validate {data_yaml}` lists every problem)"
        )
