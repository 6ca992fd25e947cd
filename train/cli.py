"""`dinocache train`: train the YOLO26-n OBB student with cached, online or no DINOv3 distillation."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """`dinocache train --config config.json [key=value ...]` (wrapped by `just train`).

    Exit 0: trained and every evaluation ran; 1: trained, but an evaluation failed (eval/failures.txt);
    2: refused or stopped by bad input (config, data, cache, teacher)."""
    ap = argparse.ArgumentParser(prog="dinocache train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", default="config.json", help="JSON file whose 'train' section holds the options"
    )
    ap.add_argument("overrides", nargs="*", help="key=value options overriding the config file")
    args = ap.parse_args(argv)

    from dinocache.train.config import TrainConfig
    from dinocache.train.eval_hooks import EvalFailed
    from dinocache.train.run import train
    from dinocache.train.trainer import NonFiniteLoss

    from dinocache.core.config import load
    from dinocache.core.errors import DinocacheError

    try:
        cfg = load(TrainConfig, args.config, "train", args.overrides)
        if cfg.resume:
            from dinocache.train.preflight import resume_ignores

            from dinocache.core.config import parse_overrides

            ignored = resume_ignores(cfg, list(parse_overrides(args.overrides)))
            if ignored:
                print(
                    f"error: resume=true continues the saved run with its own options, so {', '.join(ignored)} "
                    "would not apply; drop it, or start a new run (another name=) with it",
                    file=sys.stderr,
                )
                return 2
        trainer = train(cfg)
    except (EvalFailed, NonFiniteLoss) as e:  # the run went wrong (a grade failed, NaN loss): not a success
        print(f"error: {e}", file=sys.stderr)
        return 1
    except DinocacheError as e:
        print(f"error: {_first_cause(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"error: {interrupted_hint(e, args.config)}", file=sys.stderr)
        return 130
    print(f"dinocache train: outputs in {trainer.save_dir}")
    return 0


def interrupted_hint(e: KeyboardInterrupt, config: str) -> str:
    """What Ctrl-C left and the command that continues it (`train()` tags the interrupt with its run)."""
    from pathlib import Path

    from dinocache.train.context import RESUME_FILE

    save_dir, name = getattr(e, "save_dir", None), getattr(e, "run_name", "")
    if save_dir is None:
        return "interrupted before the run started; nothing was written"
    if (Path(save_dir) / "weights" / RESUME_FILE).exists():
        return (
            f"interrupted; {save_dir} keeps the last finished epoch. Continue it with "
            f"`dinocache train --config {config} resume=true name={name}`"
        )
    return f"interrupted before the first epoch ended; nothing kept (the run folder {save_dir} was removed)"


def _first_cause(e: BaseException) -> str:
    """The message itself: an error re-raised from a DataLoader worker carries the worker's traceback text, whose
    last line is `pkg.Class: message`."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    name = type(e).__name__
    return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last


if __name__ == "__main__":
    sys.exit(main())
