"""Run logging: TensorBoard event files in the run folder, and Weights & Biases when enabled.

W&B never prompts and never waits for the network unless a key is configured:
- the mode is `$WANDB_MODE` when set, else "auto"; "auto" means online when an API key is configured
  (`$WANDB_API_KEY`, or a netrc entry for the W&B host) and offline otherwise. "online" without a key
  also falls back to offline (wandb would prompt for a login). "disabled" turns W&B off.
- offline runs are written under `{run_dir}/wandb/` and can be uploaded later with `wandb sync DIR`.
- if wandb cannot be imported, rejects its settings (e.g. WANDB_MODE=invalid) or fails to start or log,
  ONE warning is emitted and the run goes on with TensorBoard only. An online start that fails (no
  network within `INIT_TIMEOUT_S`) is retried once offline before giving up.
"""

from __future__ import annotations

import logging
import math
import netrc
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# Seconds wandb may spend starting a run (its default is 90).
INIT_TIMEOUT_S = 15.0


def wandb_api_key_configured() -> bool:
    """True when wandb could authenticate without a prompt: $WANDB_API_KEY or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    files = [os.environ.get("NETRC", ""), str(Path.home() / ".netrc"), str(Path.home() / "_netrc")]
    for f in files:
        if f and Path(f).is_file():
            try:
                auth = netrc.netrc(f).authenticators(host)
            except (netrc.NetrcParseError, OSError):
                continue
            if auth and auth[2]:
                return True
    return False


def resolve_wandb_mode(requested: str | None = None) -> str:
    """The mode passed to wandb.init (see the module docstring); unknown values are passed through so
    wandb itself rejects them (and we warn)."""
    mode = (requested or os.environ.get("WANDB_MODE") or "auto").strip().lower()
    if mode in ("auto", "online", "run"):
        return "online" if wandb_api_key_configured() else "offline"
    if mode == "dryrun":
        return "offline"
    return mode


def _get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _config_dict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        from dinocache.core.config import to_dict

        return to_dict(cfg)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_")}


def _as_float(v: Any) -> float | None:
    try:
        f = float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class RunLogger:
    """`log_epoch(epoch, scalars)`, `log_images(epoch, paths)`, `close()` to TensorBoard and W&B.

    cfg (dataclass, mapping or object, e.g. TrainConfig) is read for `wandb_enabled` (default True),
    `wandb_project`, `wandb_entity` (empty = the account's default), `wandb_mode` (empty: $WANDB_MODE or
    auto), `wandb_system_metrics` (default True: wandb's CPU/GPU/memory stats) and `tensorboard_enabled`
    (default True); the whole of it becomes the W&B run config.
    """

    def __init__(self, run_dir: str | Path, cfg: Any = None, name: str | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tb = None
        self.wandb_run = None
        self.wandb_mode: str | None = None
        self._warned: set[str] = set()
        # runs live in .../runs/{run_id}/train/: the run id is the better name
        self.name = name or (self.run_dir.parent.name if self.run_dir.name == "train" else self.run_dir.name)
        if _get(cfg, "tensorboard_enabled", True):
            self._start_tensorboard()
        if _get(cfg, "wandb_enabled", True):
            self._start_wandb(cfg)

    # -- setup ---------------------------------------------------------------------------------------------
    def _warn(self, what: str, msg: str) -> None:
        """One warning per backend; after it that backend is off for the rest of the run."""
        if what in self._warned:
            return
        self._warned.add(what)
        warnings.warn(f"{what} logging disabled: {msg}", RuntimeWarning, stacklevel=3)

    def _start_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        except Exception as e:  # tensorboard missing or unwritable folder
            self.tb = None
            self._warn("TensorBoard", f"{type(e).__name__}: {e}")

    def _start_wandb(self, cfg: Any) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        requested = _get(cfg, "wandb_mode", None) or None
        mode = resolve_wandb_mode(requested)
        if mode == "disabled":
            return
        try:
            import wandb
        except Exception as e:
            self._warn("W&B", f"cannot import wandb ({type(e).__name__}: {e})")
            return
        wandb_dir = self.run_dir  # wandb adds its own `wandb/` sub-folder
        attempts = [mode] + (["offline"] if mode == "online" else [])
        last: Exception | None = None
        for m in attempts:
            try:
                self.wandb_run = wandb.init(
                    project=_get(cfg, "wandb_project", "dinocache"),
                    entity=_get(cfg, "wandb_entity", None) or None,
                    name=self.name,
                    dir=str(wandb_dir),
                    config=_config_dict(cfg),
                    mode=m,
                    reinit="create_new",
                    settings=wandb.Settings(
                        init_timeout=INIT_TIMEOUT_S,
                        silent=True,
                        console="off",
                        # system metrics (CPU, GPU, memory) unless switched off
                        x_disable_stats=not _get(cfg, "wandb_system_metrics", True),
                    ),
                )
                self.wandb_mode = m
                if m == "offline":
                    logging.getLogger("ultralytics").info(self.offline_line())
                return
            except Exception as e:
                last = e
        self.wandb_run = None
        self._warn("W&B", f"wandb.init failed with mode={mode!r} ({type(last).__name__}: {last})")

    def offline_line(self) -> str:
        """The one log line of an offline W&B run: where its files go, how to upload them, how to stop."""
        where = self.run_dir / "wandb"
        run_dir = getattr(self.wandb_run, "dir", None)
        if run_dir:  # .../wandb/offline-run-*/files
            where = Path(run_dir).parent
        return (
            f"W&B: offline (no API key), run files in {where}; upload them with `wandb sync {where}`, "
            "or switch W&B off with wandb_enabled=false (or WANDB_MODE=disabled)"
        )

    # -- logging -------------------------------------------------------------------------------------------
    def log_epoch(self, epoch: int, scalars: Mapping[str, Any]) -> None:
        """Numeric values of `scalars` at step `epoch` (None, NaN and non-numbers are skipped)."""
        vals = {k: f for k, v in scalars.items() if (f := _as_float(v)) is not None}
        if self.tb is not None:
            try:
                for k, v in vals.items():
                    self.tb.add_scalar(k, v, epoch)
                self.tb.flush()
            except Exception as e:
                self._warn("TensorBoard", f"{type(e).__name__}: {e}")
                self.tb = None
        if self.wandb_run is not None and vals:
            try:
                self.wandb_run.log({**vals, "epoch": epoch}, step=epoch)
            except Exception as e:
                self._warn("W&B", f"log failed ({type(e).__name__}: {e})")
                self.wandb_run = None

    def log_images(self, epoch: int, paths: Iterable[str | Path], prefix: str = "viz") -> None:
        """Images (JPEG/PNG files) at step `epoch`, tagged `{prefix}/{file stem}`; unreadable files are skipped."""
        import cv2

        imgs = {}
        for p in paths:
            a = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if a is not None:
                imgs[f"{prefix}/{Path(p).stem}"] = (Path(p), a[..., ::-1].copy())  # BGR -> RGB
        if not imgs:
            return
        if self.tb is not None:
            try:
                for tag, (_, rgb) in imgs.items():
                    self.tb.add_image(tag, rgb, epoch, dataformats="HWC")
                self.tb.flush()
            except Exception as e:
                self._warn("TensorBoard", f"{type(e).__name__}: {e}")
                self.tb = None
        if self.wandb_run is not None:
            try:
                import wandb

                self.wandb_run.log({tag: wandb.Image(str(p)) for tag, (p, _) in imgs.items()}, step=epoch)
            except Exception as e:
                self._warn("W&B", f"image log failed ({type(e).__name__}: {e})")
                self.wandb_run = None

    def close(self) -> None:
        if self.tb is not None:
            try:
                self.tb.close()
            except Exception:
                pass
            self.tb = None
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish()
            except Exception as e:
                self._warn("W&B", f"finish failed ({type(e).__name__}: {e})")
            self.wandb_run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
