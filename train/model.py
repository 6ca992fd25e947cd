"""The training-time student: Ultralytics' OBBModel plus feature hooks and the 1x1 projection.

Only training checkpoints of the run (never the final best.pt/last.pt, see train/export.py) contain this
class. The distillation term is added inside `loss()` because Ultralytics' training step calls
`model(batch)` and sums what comes back; the key `distill` is always emitted (0 when off), since
Ultralytics fixes the loss columns from the first batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from dinocache.train.context import DISTILL_KEY, DistillTerm
from dinocache.train.losses import LOSS_KINDS, align_to_grid, masked_cosine_loss, obb_cell_mask
from torch import nn
from ultralytics.nn.tasks import OBBModel

# projector from a student layer's C_s channels to the teacher's D (TrainConfig.dino_distill_projector)
PROJECTORS = ("linear", "conv", "mlp")


def make_projector(c_in: int, d: int, kind: str = "linear") -> nn.Module:
    """(B, C_s, h, w) -> (B, D, h, w). linear: one 1x1 conv; conv: one 3x3 conv (each cell also sees its 8
    neighbours); mlp: 1x1 conv -> GELU -> 1x1 conv with max(C_s, D) hidden channels (a non-linear read-out,
    so the student's own features need not be a linear image of the teacher's). No BatchNorm: the projector
    is EMA-averaged and exported nowhere, and a BN would follow the batch statistics of mosaics."""
    if kind == "linear":
        return nn.Conv2d(c_in, d, 1)
    if kind == "conv":
        return nn.Conv2d(c_in, d, 3, padding=1)
    if kind == "mlp":
        hidden = max(c_in, d)
        return nn.Sequential(nn.Conv2d(c_in, hidden, 1), nn.GELU(), nn.Conv2d(hidden, d, 1))
    raise ValueError(f"dino_distill_projector {kind!r}: expected one of {PROJECTORS}")


class FeatHook:
    """Forward hook that keeps the last output of a layer, in training mode only.

    A class (not a lambda or a bound method) so the model stays picklable and deep-copyable; the stored
    tensor is part of the autograd graph, so it is dropped when pickling/deep-copying (EMA copies the model).
    """

    def __init__(self) -> None:
        self.feat: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            self.feat = output

    def pop(self) -> torch.Tensor | None:
        f, self.feat = self.feat, None
        return f

    def __getstate__(self) -> dict:
        return {"feat": None}

    def __setstate__(self, state: dict) -> None:
        self.feat = None


class DistillOBBModel(OBBModel):
    """OBBModel whose `loss()` adds one weighted L_distill per distillation term (train/context.DistillTerm),
    from hooked layers projected to the term's D channels. A single-teacher run is the one-term case (item
    `distill`); a multi-teacher run emits one item per teacher (`d_NAME`)."""

    def __init__(
        self,
        cfg: str | dict = "yolo26n-obb.yaml",
        ch: int = 3,
        nc: int | None = None,
        verbose: bool = True,
        distill_layers: list[int] | tuple[int, ...] = (19,),
        distill_channels: int = 32,
        object_weight: float = 1.15,
        background_weight: float = 0.15,
        enabled: bool = True,
        terms: Sequence[DistillTerm | dict[str, Any]] | None = None,
        projector: str = "linear",
        loss_kind: str = "cosine",
        distill_only: bool = False,
    ) -> None:
        super().__init__(cfg=cfg, ch=ch, nc=nc, verbose=verbose)
        if loss_kind not in LOSS_KINDS:
            raise ValueError(f"dino_distill_loss {loss_kind!r}: expected one of {LOSS_KINDS}")
        # pretraining on unlabeled images (train/pretrain.py): the forward stops at the last distilled layer
        # and the loss is the distillation alone, one column per layer (no labels, no detection head)
        self.distill_only = bool(distill_only)
        if self.distill_only:
            self.criterion = None  # Ultralytics' loop asks it for update() each epoch; no detection loss here
        n_layers = len(self.model)
        # without `terms`: the one term of a single-teacher run, from the keyword arguments
        one = DistillTerm(
            layers=tuple(distill_layers),
            channels=int(distill_channels),
            object_weight=float(object_weight),
            background_weight=float(background_weight),
            loss=loss_kind,
        )
        # disabled (teacher_source=none): the terms stay, so their items are emitted (as 0), nothing is hooked
        self.distill_terms: list[DistillTerm] = [DistillTerm.of(t, loss=loss_kind) for t in terms or [one]]
        for t in self.distill_terms:
            if t.loss not in LOSS_KINDS:
                raise ValueError(f"dino_distill_loss {t.loss!r}: expected one of {LOSS_KINDS}")
        for i in dict.fromkeys(i for t in self.distill_terms for i in t.layers):
            if not 0 <= i < n_layers - 1:
                raise ValueError(
                    f"dino_distill_layers: layer {i} is not a feature layer of this model (0..{n_layers - 2})"
                )
        hooked = self.distill_terms if enabled else []
        # the hooked layers: the union of the terms' layers, once each, in order of first use
        self.distill_layers: list[int] = list(dict.fromkeys(i for t in hooked for i in t.layers))
        self.distill_channels = int(distill_channels)
        # set every epoch by the trainer from train.losses.distill_weight (the largest term weight with a
        # `teachers` list); the weight of every term that has none in distill_term_weights
        self.distill_weight = 0.0
        # set every epoch by the trainer from train.losses.term_weights (multi-teacher runs), by term name
        self.distill_term_weights: dict[str, float] = {}
        self.distill_hooks: list[FeatHook] = []
        in_channels = self._layer_channels(self.distill_layers, ch) if self.distill_layers else []
        c_of = dict(zip(self.distill_layers, in_channels))
        # one projection per (term, layer), in term order: (B, C_s, h, w) -> (B, D_term, h, w); a submodule so
        # optimizer/EMA/checkpoints see it. distill_slots[k]: term k's (projection, hook) index pairs
        convs: list[nn.Module] = []
        self.distill_slots: list[list[tuple[int, int]]] = []
        for t in hooked:
            self.distill_slots.append(
                [(len(convs) + j, self.distill_layers.index(i)) for j, i in enumerate(t.layers)]
            )
            convs += [make_projector(c_of[i], int(t.channels), projector) for i in t.layers]
        self.distill_proj = nn.ModuleList(convs)
        for i in self.distill_layers:
            hook = FeatHook()
            self.model[i].register_forward_hook(hook)
            self.distill_hooks.append(hook)

    def _layer_channels(self, layers: list[int], ch: int) -> list[int]:
        """Output channels of `layers`, found with one small forward pass (works for any yaml)."""
        out: dict[int, int] = {}
        handles = [
            self.model[i].register_forward_hook(lambda m, a, o, i=i: out.__setitem__(i, o.shape[1]))
            for i in layers
        ]
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                self.predict(torch.zeros(1, ch, 64, 64))
        finally:
            for h in handles:
                h.remove()
            self.train(was_training)
        return [out[i] for i in layers]

    # -- the distillation term ------------------------------------------------------------------------------
    def term_target(
        self, term: DistillTerm, batch: dict
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(teacher map (B, D, h, w), validity (B, h, w) or None, object-cell mask (B, h, w)) of `term`.

        batch["teacher_feat"] is (B, K, h_f, w_f), already standardised: a single teacher's D channels, or
        the packed map of a `teachers` list on the finest teacher grid, each term's channels at its offset
        (train/dataset.MultiTeacherLookup); a coarser teacher is pooled back to its own grid (factor x factor
        average: exact when nothing moved, since its cells were repeated). Distill-only models treat every
        cell alike (no object mask): their images have no labels to trust.
        """
        packed = batch["teacher_feat"]
        o, d, f = term.offset, term.channels, term.factor
        teacher = packed if (o, d) == (0, packed.shape[1]) else packed[:, o : o + d]  # (B, D, h_f, w_f)
        valid = batch.get("teacher_valid")  # warp mode: (B, h_f, w_f) in [0, 1]; else None
        if f > 1:
            teacher = F.avg_pool2d(teacher.float(), f)  # (B, D, h_f/f, w_f/f) = the term's own grid
            valid = None if valid is None else F.avg_pool2d(valid[:, None].float(), f)[:, 0]
        grid = (int(teacher.shape[-2]), int(teacher.shape[-1]))
        b = teacher.shape[0]
        if self.distill_only:
            mask = torch.zeros(b, *grid, dtype=torch.bool, device=teacher.device)  # (B, h, w)
        else:
            mask = obb_cell_mask(batch["bboxes"], batch["batch_idx"], b, grid)  # (B, h, w)
        return teacher, valid, mask

    def pair_losses(
        self, term: DistillTerm, pairs: Iterable[tuple[nn.Module, torch.Tensor]], batch: dict
    ) -> list[torch.Tensor]:
        """Unweighted L_distill of `term` for each (projection, hooked feature) pair (scalars, fp32)."""
        teacher, valid, mask = self.term_target(term, batch)
        grid = (int(teacher.shape[-2]), int(teacher.shape[-1]))
        out = []
        for proj, f in pairs:
            s = align_to_grid(proj(f), grid)  # (B, C_s, h_s, w_s) -> (B, D, h_s, w_s) -> (B, D, h, w)
            out.append(
                masked_cosine_loss(
                    s, teacher, mask, term.object_weight, term.background_weight, valid=valid, kind=term.loss
                )
            )
        return out

    def term_layer_losses(self, k: int, feats: list[torch.Tensor], batch: dict) -> list[torch.Tensor]:
        """Unweighted L_distill of each layer of term k; `feats`: the hooks' outputs, in distill_layers order."""
        pairs = [(self.distill_proj[p], feats[h]) for p, h in self.distill_slots[k]]
        return self.pair_losses(self.distill_terms[k], pairs, batch)

    def term_losses(self, feats: list[torch.Tensor], batch: dict) -> list[torch.Tensor]:
        """Unweighted L_distill of each term (mean over its layers; scalars, fp32)."""
        return [
            torch.stack(self.term_layer_losses(k, feats, batch)).mean()
            for k in range(len(self.distill_slots))
        ]

    def layer_losses(self, feats: list[torch.Tensor], batch: dict) -> list[torch.Tensor]:
        """One-term model (single teacher, pretraining): unweighted L_distill of each hooked layer, pairing
        `distill_proj` with `feats` in order (scalars, fp32)."""
        return self.pair_losses(self.distill_terms[0], zip(self.distill_proj, feats), batch)

    def distill_loss(self, feats: list[torch.Tensor], batch: dict) -> torch.Tensor:
        """One-term model: unweighted L_distill averaged over the hooked layers (scalar, fp32)."""
        return torch.stack(self.layer_losses(feats, batch)).mean()

    def term_weight(self, term: DistillTerm) -> float:
        return float(self.distill_term_weights.get(term.name, self.distill_weight))

    def distill_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the distilled layers for images (B, 3, H, W): Ultralytics' layer loop (`_predict_once`),
        stopped after the last distilled layer, so the layers above it (the detection head) never run.
        [(B, C_s, h_s, w_s) per distilled layer]"""
        want = set(self.distill_layers)
        last = max(want)
        out: dict[int, torch.Tensor] = {}
        y: list[torch.Tensor | None] = []
        x = img
        for m in self.model:
            if m.f != -1:  # input from earlier layers
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
            if m.i in want:
                out[m.i] = x
            if m.i == last:
                break
        for h in self.distill_hooks:
            h.pop()  # the hooks fired too; the outputs are returned here instead
        return [out[i] for i in self.distill_layers]

    def layer_item(self, i: int) -> str:
        """Loss column of distilled layer i in distill-only runs (<= 10 characters)."""
        return f"d{i}"

    def _distill_only_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """w * mean over layers of L_distill, scaled by the batch size like Ultralytics' terms; items: the
        weighted mean `distill` and each layer's unweighted term d<layer>."""
        feats = self.distill_features(batch["img"])
        teacher = batch.get("teacher_feat")
        n = batch["img"].shape[0]
        zero = feats[0].new_zeros((), dtype=torch.float32)
        per = [zero] * len(feats)
        if self.training and teacher is not None and self.distill_weight > 0:
            per = self.layer_losses(feats, batch)
        d = (self.distill_weight * torch.stack(per).mean()).reshape(1)
        if not d.requires_grad:  # nothing to learn from this batch: keep the graph connected for backward()
            d = d + 0.0 * sum(p.sum() for p in self.distill_proj.parameters())
        items = {DISTILL_KEY: d.detach()[0]}
        items.update({self.layer_item(i): v.detach() for i, v in zip(self.distill_layers, per)})
        return d * n, items

    def loss(self, batch: dict, preds: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Ultralytics' OBB loss vector plus one weighted term per distillation term, each scaled by the batch
        size like the stock terms, each its own always-emitted item (`distill`, or `d_NAME`)."""
        if self.distill_only:
            return self._distill_only_loss(batch)
        loss, items = super().loss(batch, preds)  # the forward runs here, so the hooks have fired
        feats = [h.pop() for h in self.distill_hooks]
        teacher = batch.get("teacher_feat") if isinstance(batch, dict) else None
        zero = torch.zeros(1, device=loss.device)
        ds = [zero] * len(self.distill_terms)
        if self.training and teacher is not None and feats and all(f is not None for f in feats):
            ws = [self.term_weight(t) for t in self.distill_terms]
            if any(w > 0 for w in ws):
                ds = [(w * v).reshape(1) for w, v in zip(ws, self.term_losses(feats, batch))]
        items = dict(items)
        for t, d in zip(self.distill_terms, ds):
            items[t.loss_name] = d.detach()[0]
        n = batch["img"].shape[0]
        return torch.cat([loss, *(d.to(loss.dtype) * n for d in ds)]), items
