"""Teacher fine-tuning: LoRA adapters on DINOv3's attention, trained on a dense target chosen from the
annotations, then merged into a plain DINOv3 folder that precompute can use as `dino_root`.

    dinocache finetune-teacher --config config.json [key=value ...]   # finetune/train.py
    dinocache merge-teacher --adapter DIR --out DIR [--overwrite]     # finetune/merge.py
"""

from __future__ import annotations

from dinocache.core.errors import DinocacheError


class FinetuneError(DinocacheError, ValueError):
    """Bad input to fine-tuning or merging (wrong base, occupied output folder, ...); names the files."""
