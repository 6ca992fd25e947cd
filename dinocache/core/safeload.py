"""Loading saved training state without running code from the file.

`torch.load(weights_only=True)` only rebuilds tensors, numbers, strings and plain containers (plus the
globals on torch's allow-list); a file that references anything else (a class, a function: what a pickle
needs to run code on load) is refused here with the file named, never unpickled. dinocache writes its own
state files (resume.pt, trainer_state.pt) in exactly that vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dinocache.core.errors import DinocacheError


class UnsafeFile(DinocacheError):
    """A state file that is not plain tensors and containers (or not a torch file at all)."""


def load_state(path: str | Path) -> Any:
    """The contents of a torch-saved state file, loaded with weights_only=True; UnsafeFile naming it else."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeFile(
            f"{path}: refused to load: it holds more than tensors and plain values, so loading it could run "
            f"code ({why[:300]}); only load state files you made yourself"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UnsafeFile(f"{path}: cannot load ({type(e).__name__}: {str(e)[:300]})") from None


def load_ultralytics_checkpoint(path: str | Path) -> dict[str, Any]:
    """An Ultralytics checkpoint (best.pt, last.pt, yolo26n-obb.pt) loaded through Ultralytics' restricted
    loader (`torch_safe_load(safe_only=True)`: weights_only=True against its allow-list of model classes).
    A .pt that needs anything else to unpickle is refused naming the file; Ultralytics' own default loader
    (`weights_only=False`) would have run whatever the file asks for."""
    import pickle

    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except (pickle.UnpicklingError, TypeError) as e:
        # Ultralytics' restricted loader reports a global outside its allow-list as a TypeError
        if isinstance(e, TypeError) and "outside the supported" not in str(e):
            raise UnsafeFile(f"{path}: cannot load checkpoint (TypeError: {str(e)[:300]})") from None
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeFile(
            f"{path}: refused to load: it references code outside Ultralytics' model classes, so unpickling it "
            f"could run that code ({why[:300]}); use checkpoints from a source you trust"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch/Ultralytics raise many kinds for a file that is not a checkpoint
        raise UnsafeFile(f"{path}: cannot load checkpoint ({type(e).__name__}: {str(e)[:300]})") from None
    if not isinstance(ckpt, dict):
        raise UnsafeFile(f"{path}: not an Ultralytics checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt
