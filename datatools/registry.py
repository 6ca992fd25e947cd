"""Characteristic-based augmentation registry.

The user describes the objects (`characteristics`) and the scene (`environment`), picks an `intensity`,
and `get_pipeline` composes the augmentation spec from the registered entries. Each entry names one
operation and its parameters per intensity; entries for the same operation are merged by taking the
widest range (a union: any requested variation is kept), then `cap` entries limit it (e.g. `chiral`
objects must never be mirrored, whatever else asked for flips).

Operations (implemented in `datatools.augment`; geometric ones go into the view's 3x3 matrix):
    rotate      degrees: max |angle|, uniform in [-degrees, degrees]
    flip        lr, ud: probabilities of a left-right / up-down mirror
    scale       lo, hi: isotropic scale factor range
    stretch     amount: aspect change, x scaled by (1+u) and y by 1/(1+u), u in [-amount, amount]
    translate   fraction: max shift as a fraction of imgsz
    hsv         h, s, v: gains like Ultralytics' hsv_h/s/v
    brightness  brightness: max shift as a fraction of 255; contrast: max |contrast - 1|
    blur        p: probability; sigma: max Gaussian sigma in pixels
    noise       p: probability; std: max Gaussian noise std in grey levels

Users add entries with `register(...)` from a module listed in the config's `plugins` or exposed as
a Python entry point in the group `dinocache.augment` (see docs/dataset.md).
"""

from __future__ import annotations

import copy
import difflib
import importlib
import logging
from dataclasses import dataclass, field

from dinocache.core.config import ConfigError

log = logging.getLogger(__name__)

INTENSITIES = ("low", "medium", "high")
ENVIRONMENT = {"lighting": ("variable", "fixed"), "camera": ("fixed", "moving")}
# Operation -> its parameters and how two entries merge: "max" keeps the larger, "min" the smaller.
OPS: dict[str, dict[str, str]] = {
    "rotate": {"degrees": "max"},
    "flip": {"lr": "max", "ud": "max"},
    "scale": {"lo": "min", "hi": "max"},
    "stretch": {"amount": "max"},
    "translate": {"fraction": "max"},
    "hsv": {"h": "max", "s": "max", "v": "max"},
    "brightness": {"brightness": "max", "contrast": "max"},
    "blur": {"p": "max", "sigma": "max"},
    "noise": {"p": "max", "std": "max"},
}
# Photometric operations registered with `register_op` (name -> fn(image, params, rng) -> image).
CUSTOM_OPS: dict[str, object] = {}


class RegistryError(ConfigError):
    """Unknown characteristic/setting/operation; the message names it and the closest known name."""


@dataclass(frozen=True)
class Entry:
    key: str  # characteristic name, "base", or an environment setting such as "camera=moving"
    op: str
    params: dict[str, dict[str, float]]  # intensity -> parameters
    reason: str = ""
    cap: bool = False  # limits the merged parameters instead of widening them


@dataclass
class Pipeline:
    """The composed spec: op -> parameters, plus which entries chose each op (for the log/manifest)."""

    ops: dict[str, dict[str, float]]
    sources: dict[str, list[str]] = field(default_factory=dict)
    characteristics: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    intensity: str = "medium"

    def to_dict(self) -> dict:
        return {
            "characteristics": list(self.characteristics),
            "environment": dict(self.environment),
            "intensity": self.intensity,
            "ops": copy.deepcopy(self.ops),
            "sources": copy.deepcopy(self.sources),
        }

    def describe(self) -> str:
        lines = [
            f"augmentation pipeline (intensity {self.intensity}; characteristics {self.characteristics or '[]'}; "
            f"environment {self.environment})"
        ]
        for op, params in self.ops.items():
            ps = ", ".join(f"{k}={v:g}" for k, v in params.items())
            lines.append(f"  {op:<11} {ps:<40} <- {', '.join(self.sources.get(op, []))}")
        return "\n".join(lines)


_REGISTRY: dict[str, list[Entry]] = {}
_LOADED_ENTRY_POINTS = False


def _levels(low: dict, medium: dict, high: dict) -> dict[str, dict[str, float]]:
    return {"low": low, "medium": medium, "high": high}


def register(
    name: str,
    op: str,
    low: dict[str, float],
    medium: dict[str, float] | None = None,
    high: dict[str, float] | None = None,
    reason: str = "",
    cap: bool = False,
) -> Entry:
    """Add one entry for characteristic `name` (or environment setting "lighting=variable", ...).

    `low/medium/high` are the op's parameters per intensity (medium/high default to the lower level).
    A name may get several entries (one per op). Returns the entry."""
    if op not in OPS and op not in CUSTOM_OPS:
        raise RegistryError(
            f"register({name!r}): unknown op {op!r}{_suggest(op, list(OPS) + list(CUSTOM_OPS))}"
        )
    medium = medium if medium is not None else low
    high = high if high is not None else medium
    if op in OPS:
        for lvl in (low, medium, high):
            for k in lvl:
                if k not in OPS[op]:
                    raise RegistryError(
                        f"register({name!r}): op {op!r} has no parameter {k!r}{_suggest(k, list(OPS[op]))}"
                    )
    entry = Entry(name, op, _levels(dict(low), dict(medium), dict(high)), reason, cap)
    _REGISTRY.setdefault(name, []).append(entry)
    return entry


def register_op(name: str, fn) -> None:
    """Add a photometric operation `fn(image_bgr_uint8, params: dict, rng: np.random.Generator) -> image`.
    Its parameters merge by max."""
    if name in OPS:
        raise RegistryError(f"register_op: {name!r} is a built-in operation")
    CUSTOM_OPS[name] = fn


def known_characteristics() -> list[str]:
    return sorted(k for k in _REGISTRY if k != "base" and "=" not in k)


def entries(name: str) -> list[Entry]:
    return list(_REGISTRY.get(name, []))


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import plugin modules (they call `register`) and, once, the `dinocache.augment` entry points."""
    global _LOADED_ENTRY_POINTS
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise RegistryError(f"plugins: cannot import {m!r}: {e}") from None
    if not _LOADED_ENTRY_POINTS:
        _LOADED_ENTRY_POINTS = True
        from importlib.metadata import entry_points

        for ep in entry_points(group="dinocache.augment"):
            obj = ep.load()
            if callable(obj):
                obj()


def get_pipeline(
    characteristics: list[str] | tuple[str, ...] = (),
    environment: dict[str, str] | None = None,
    intensity: str = "medium",
) -> Pipeline:
    """Compose the spec for these object characteristics, scene settings and intensity."""
    if intensity not in INTENSITIES:
        raise RegistryError(
            f"intensity: {intensity!r} is not one of {list(INTENSITIES)}{_suggest(intensity, list(INTENSITIES))}"
        )
    env = dict(environment or {})
    keys = ["base"]
    for c in characteristics:
        if c not in _REGISTRY or c == "base" or "=" in c:
            known = known_characteristics()
            raise RegistryError(
                f"characteristics: unknown characteristic {c!r}{_suggest(c, known)}; known: {', '.join(known)}"
            )
        keys.append(c)
    for k, v in env.items():
        if k not in ENVIRONMENT:
            raise RegistryError(f"environment: unknown setting {k!r}{_suggest(k, list(ENVIRONMENT))}")
        if v not in ENVIRONMENT[k]:
            raise RegistryError(
                f"environment.{k}: {v!r} is not one of {list(ENVIRONMENT[k])}{_suggest(str(v), list(ENVIRONMENT[k]))}"
            )
        keys.append(f"{k}={v}")
    ops: dict[str, dict[str, float]] = {}
    sources: dict[str, list[str]] = {}
    caps: list[Entry] = []
    for key in dict.fromkeys(keys):
        for e in _REGISTRY.get(key, []):
            if e.cap:
                caps.append(e)
                continue
            params = e.params[intensity]
            cur = ops.setdefault(e.op, {})
            for p, v in params.items():
                rule = OPS.get(e.op, {}).get(p, "max")
                cur[p] = v if p not in cur else (max(cur[p], v) if rule == "max" else min(cur[p], v))
            sources.setdefault(e.op, []).append(key)
    for e in caps:
        if e.op not in ops:
            continue
        for p, v in e.params[intensity].items():
            rule = OPS.get(e.op, {}).get(p, "max")
            if p in ops[e.op]:
                ops[e.op][p] = min(ops[e.op][p], v) if rule == "max" else max(ops[e.op][p], v)
        sources[e.op].append(f"{e.key} (cap)")
    pipe = Pipeline(ops, sources, list(characteristics), env, intensity)
    log.info(pipe.describe())
    return pipe


# ------------------------------------------------------------------------------ built-in entries
# Base: mild, label-safe variation every dataset gets.
register("base", "flip", {"lr": 0.5}, reason="mirror symmetry of most scenes")
register(
    "base",
    "scale",
    {"lo": 0.9, "hi": 1.1},
    {"lo": 0.75, "hi": 1.25},
    {"lo": 0.6, "hi": 1.4},
    "size variation",
)
register("base", "translate", {"fraction": 0.05}, {"fraction": 0.1}, {"fraction": 0.15}, "position variation")
register(
    "base",
    "hsv",
    {"h": 0.005, "s": 0.3, "v": 0.2},
    {"h": 0.015, "s": 0.5, "v": 0.3},
    {"h": 0.02, "s": 0.7, "v": 0.4},
    "colour variation",
)

register(
    "rotation_invariant",
    "rotate",
    {"degrees": 90},
    {"degrees": 180},
    {"degrees": 180},
    "objects seen at any angle (aerial, top-down)",
)
register("rotation_invariant", "flip", {"lr": 0.5, "ud": 0.5}, reason="no up/down in top-down views")
register(
    "changes_shape",
    "stretch",
    {"amount": 0.05},
    {"amount": 0.1},
    {"amount": 0.2},
    "deformable objects change aspect",
)
register(
    "changes_shape",
    "rotate",
    {"degrees": 5},
    {"degrees": 10},
    {"degrees": 20},
    "deformable objects bend and tilt",
)
register(
    "reflective_surface",
    "brightness",
    {"brightness": 0.1, "contrast": 0.15},
    {"brightness": 0.2, "contrast": 0.3},
    {"brightness": 0.3, "contrast": 0.4},
    "highlights and glare",
)
register("reflective_surface", "hsv", {"v": 0.4}, {"v": 0.5}, {"v": 0.6}, "specular value changes")
register(
    "small_objects",
    "scale",
    {"lo": 1.0, "hi": 1.3},
    {"lo": 1.0, "hi": 1.5},
    {"lo": 1.0, "hi": 2.0},
    "zoom in so small objects keep pixels",
)
register("small_objects", "blur", {"sigma": 0.5}, reason="blur erases small objects", cap=True)
register(
    "small_objects",
    "scale",
    {"lo": 0.9},
    {"lo": 0.9},
    {"lo": 0.8},
    reason="shrinking erases small objects",
    cap=True,
)
register(
    "large_objects",
    "scale",
    {"lo": 0.6, "hi": 1.0},
    {"lo": 0.5, "hi": 1.0},
    {"lo": 0.4, "hi": 1.0},
    "zoom out so large objects fit",
)
register(
    "chiral",
    "flip",
    {"lr": 0.0, "ud": 0.0},
    reason="mirroring changes the class (text, left/right parts)",
    cap=True,
)
register(
    "color_defines_class", "hsv", {"h": 0.0, "s": 0.2}, reason="hue/saturation carry the class", cap=True
)
register(
    "textureless",
    "noise",
    {"p": 0.3, "std": 3},
    {"p": 0.5, "std": 6},
    {"p": 0.5, "std": 10},
    "sensor noise on flat surfaces",
)
register(
    "lighting=variable",
    "brightness",
    {"brightness": 0.1, "contrast": 0.15},
    {"brightness": 0.2, "contrast": 0.25},
    {"brightness": 0.3, "contrast": 0.4},
    "day/night, shadows",
)
register("lighting=variable", "hsv", {"v": 0.4}, {"v": 0.5}, {"v": 0.6}, "exposure changes")
register("lighting=fixed", "hsv", {"v": 0.1}, {"v": 0.15}, {"v": 0.2}, "constant exposure", cap=True)
register(
    "camera=moving",
    "blur",
    {"p": 0.2, "sigma": 1.0},
    {"p": 0.3, "sigma": 1.5},
    {"p": 0.4, "sigma": 2.5},
    "motion/defocus blur",
)
register("camera=moving", "rotate", {"degrees": 5}, {"degrees": 10}, {"degrees": 15}, "camera roll")
register(
    "camera=moving",
    "noise",
    {"p": 0.2, "std": 3},
    {"p": 0.3, "std": 5},
    {"p": 0.4, "std": 8},
    "sensor noise in fast exposures",
)
register(
    "camera=fixed",
    "translate",
    {"fraction": 0.05},
    {"fraction": 0.05},
    {"fraction": 0.1},
    "a fixed camera frames the scene the same way",
    cap=True,
)
