"""Shared config plumbing for every entry point.

Each entry point owns one dataclass whose fields are its options. The values come, in order of
precedence, from `key=value` command-line arguments, the entry point's section of `config.json`, the
shared top-level keys of `config.json` (SHARED_KEYS), and the dataclass defaults. Command-line strings
are read as YAML (`[16, 19]`, `{close_mosaic: 0}`), types are checked by pydantic against the field
annotations, unknown keys are refused with the closest known name. A field's range is part of its
annotation (`Annotated[int, Field(ge=1)]`, `Literal[...]`, `rule(...)` for a one-field test pydantic has no
keyword for), checked by `check_fields` on every construction path; a class's `validate()` holds only the
rules that relate several fields. A class may take another tool's keys into one dict field (TrainConfig:
every Ultralytics train argument goes into `extra`). The resolved config is saved beside the outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dinocache.core.errors import DinocacheError
from dinocache.core.secrets import SECRET_FIELDS

T = TypeVar("T")


class ConfigError(DinocacheError, ValueError):
    """A bad config value or key; the message names the key (and the file when there is one)."""


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


# Top-level keys of config.json that every section inherits unless it sets its own value.
SHARED_KEYS = ("imgsz", "data", "cache", "dino_root")

# The sections of config.json (one per entry point that reads one): any other object at the top level is a
# misspelling that would otherwise leave its entry point on every default. Keys starting with `_` or `$`
# (comments, `$schema`) are ignored.
SECTIONS = (
    "augment",
    "precompute",
    "train",
    "pretrain",
    "finetune_teacher",
    "finetune_teachers",
    "warp_check",
)


def _adapter(tp: Any) -> Any:
    """pydantic's validator for one field type (lax mode: "3" -> 3, "true" -> True, 5 -> "5")."""
    from pydantic import ConfigDict, TypeAdapter

    key = repr(tp)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = TypeAdapter(tp, config=ConfigDict(coerce_numbers_to_str=True))
    return _ADAPTERS[key]


_ADAPTERS: dict[str, Any] = {}


def _parts(tp: Any) -> tuple[Any, ...]:
    """The members of a union (or the type itself)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def parse_value(text: str, key: str, tp: Any = Any) -> Any:
    """A string (command line or config file) -> the value for a key of type `tp`. Lists, mappings and
    untyped keys (another tool's arguments) are read as YAML (`[16, 19]`, `{close_mosaic: 0}`, `0.5`); a
    list key also takes `a,b`; `none`/`null` is None where None is allowed; everything else stays a string
    for pydantic to coerce (so `off` stays 'off' for a Literal and `name=2024` a string)."""
    s = text.strip()
    parts = _parts(tp)
    if s.lower() in ("none", "null") and (tp is Any or type(None) in parts):
        return None
    containers = [
        p for p in parts if p is Any or typing.get_origin(p) in (list, tuple, set, dict) or p is dict
    ]
    if not containers:
        return text
    if all(typing.get_origin(p) in (list, tuple, set) for p in containers) and not s.startswith("["):
        return [v.strip() for v in s.split(",") if v.strip()]
    try:
        return yaml.safe_load(s) if s else s
    except yaml.YAMLError as e:
        if s[:1] in "[{":
            why = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
            mark = getattr(e, "problem_mark", None)
            at = f" at column {mark.column + 1}" if mark is not None else ""
            shown = _shown(key, text)
            raise ConfigError(f"{key}: cannot parse {shown} as a YAML value{at} ({why or e})") from None
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Validate `value` against the field type `tp` with pydantic; the error names the key."""
    from pydantic import ValidationError

    if isinstance(value, bool) and _numeric(tp):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        return _adapter(tp).validate_python(value)
    except ValidationError as e:
        raise ConfigError(_explain(key, e, tp)) from None


def _shown(key: str, value: Any) -> str:
    """How an error shows a bad value: never the text of a field that may hold credentials."""
    if key in SECRET_FIELDS:
        return f"a {type(value).__name__} (not shown: {key} may hold credentials)"
    return repr(value)


def _numeric(tp: Any) -> bool:
    """A number field (int, float, int | float, int | None, int | Literal[...]): pydantic's lax mode would
    read `true` as 1 there, so a bool is refused instead."""
    parts = [p for p in _parts(tp) if p is not type(None) and typing.get_origin(p) is not typing.Literal]
    return bool(parts) and all(p in (int, float) for p in parts)


class Config:
    """Base of every entry point's options class (a dataclass whose fields are the options). Each field has a
    comment above it and declares its range in its annotation; `build` refuses unknown keys, checks types and
    `check_fields`, then calls `validate()`. A class that must also check when built by hand calls
    `check_fields(self)` and `self.validate()` from `__post_init__`."""

    def validate(self) -> None:
        """Rules that relate several fields (`require(...)`); none by default."""


# -- declared constraints ----------------------------------------------------------------------------------
def rule(test: Callable[[Any], Any], message: str | Callable[[Any], str]) -> Any:
    """A one-field test pydantic has no keyword for, as annotation metadata:
    `Annotated[int | float, rule(lambda b: ..., "must be ..., got {value}")]`. `message` may name the value
    as `{value}` / `{value!r}`, or be a function of the value; the error reads `key: message`."""
    from pydantic import AfterValidator

    def check(v: Any) -> Any:
        if not test(v):
            raise ValueError(message(v) if callable(message) else message.format(value=v))
        return v

    return AfterValidator(check)


def distinct(what: str) -> Any:
    """A list field's rule: no entry twice (`duplicate layers in [19, 19]`)."""
    return rule(lambda v: len(set(v)) == len(v), f"duplicate {what} in {{value}}")


def _declares(tp: Any) -> bool:
    """Whether a field's annotation declares something beyond its plain type: a range or rule (Annotated),
    a set of allowed values (Literal) or a typed record (a dataclass), anywhere inside it."""
    if typing.get_origin(tp) is typing.Annotated or typing.get_origin(tp) is typing.Literal:
        return True
    if dataclasses.is_dataclass(tp):
        return True
    return any(_declares(a) for a in typing.get_args(tp) if not isinstance(a, (str, int, float, bool)))


def _hints(cls: type, extras: bool = True) -> dict[str, Any]:
    """A class's field annotations, with (`Annotated[int, Field(ge=1)]`) or without (`int`) their metadata."""
    if (cls, extras) not in _HINTS:
        # the module's namespace as globals, so a `rule(lambda ...)` in an annotation sees the module's names
        module = vars(sys.modules[cls.__module__])
        _HINTS[cls, extras] = typing.get_type_hints(cls, globalns=module, include_extras=extras)
    return _HINTS[cls, extras]


_HINTS: dict[tuple[type, bool], dict[str, Any]] = {}


def check_fields(obj: Any) -> None:
    """Check every field whose annotation declares a range, rule, choice or record (pydantic, lax mode) and
    keep pydantic's value where it differs (a `teachers` entry given as a mapping becomes its dataclass); a
    ConfigError names the key. Config
    classes call this in `__post_init__` (so `Cls(...)` by hand and `dataclasses.replace` check too) and
    `build` calls it for every class."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints.get(f.name)
        if tp is None or not _declares(tp):
            continue
        value = getattr(obj, f.name)
        if isinstance(value, bool) and _numeric(_hints(type(obj), extras=False)[f.name]):
            raise ConfigError(f"{f.name}: expected a number, got {value!r}")
        checked = _coerce(value, tp, f.name)
        if checked != value:  # a record given as a mapping; an equal number (5 for 5.0) stays as given
            object.__setattr__(obj, f.name, checked)


# pydantic's union-member tags in an error location (`int`, `function-after[...]`), not keys of ours
_TAG = re.compile(r"^(int|float|str|bool|none|[a-z_-]+\[.*\]|[a-z]+-[a-z-]+)$")


def _where(key: str, loc: tuple[Any, ...]) -> str:
    """`teachers`, (0, 'layers', 1) -> `teachers[0].layers[1]`."""
    out = key
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif not _TAG.match(str(p)):
            out += f".{p}"
    return out


def _bounds(tp: Any) -> tuple[tuple[str, Any] | None, tuple[str, Any] | None]:
    """The lower and upper bound an annotation declares: (('>=', 0), ('<=', 1)), None where there is none."""
    lo = hi = None
    meta: list[Any] = []
    for m in typing.get_args(tp)[1:] if typing.get_origin(tp) is typing.Annotated else ():
        meta.extend(getattr(m, "metadata", [m]))
    for m in meta:
        for attr, op in (("ge", ">="), ("gt", ">")):
            if getattr(m, attr, None) is not None:
                lo = (op, getattr(m, attr))
        for attr, op in (("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                hi = (op, getattr(m, attr))
    return lo, hi


def _field_type(tp: Any) -> Any:
    """`Annotated[...] | None` -> the Annotated part (where a field's own bounds are declared)."""
    for p in _parts(tp):
        if typing.get_origin(p) is typing.Annotated:
            return p
    return tp


def _explain(key: str, e: Any, tp: Any) -> str:
    """A pydantic ValidationError as `key: message`: ranges as `must be >= 1, got 0` / `must be in (0, 1],
    got 2`, a rule's own message, unknown keys of a record with the closest known one."""
    errs = e.errors()
    extra = [x for x in errs if x["type"] in ("extra_forbidden", "unexpected_keyword_argument")]
    if extra:
        parent = extra[0]["loc"][:-1]
        names = sorted(str(x["loc"][-1]) for x in extra if x["loc"][:-1] == parent)
        known = _record_keys(tp)
        hint = _suggest(names[0], known) if known else ""
        listed = f"; known: {known}" if known else ""
        return f"{_where(key, parent)}: unknown key(s) {names}{hint}{listed}"
    err = min(errs, key=lambda x: x["type"] in ("int_type", "float_type", "int_parsing", "float_parsing"))
    where = _where(key, err["loc"])
    value = err.get("input")
    shown = _shown(key, value)
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        lo, hi = _bounds(_field_type(tp)) if where == key else (None, None)
        if lo and hi:
            return f"{where}: must be in {'[' if lo[0] == '>=' else '('}{lo[1]}, {hi[1]}{']' if hi[0] == '<=' else ')'}, got {shown}"
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[
            kind
        ]
        return f"{where}: must be {op} {next(iter(ctx.values()), '?')}, got {shown}"
    if kind == "multiple_of":
        return f"{where}: must be a multiple of {ctx.get('multiple_of')}, got {shown}"
    if kind == "too_short" and isinstance(value, (list, tuple, str)):
        return f"{where}: must not be empty" if ctx.get("min_length") == 1 else f"{where}: {err['msg']}"
    if kind == "value_error":
        return f"{where}: {str(err['msg']).removeprefix('Value error, ')}"
    if kind == "missing":
        return f"{where}: is required"
    return f"{where}: {err['msg']} (got {shown})"


def _record_keys(tp: Any) -> list[str]:
    """The field names of the first dataclass inside a type (`list[TeacherSpec]` -> TeacherSpec's fields)."""
    if dataclasses.is_dataclass(tp):
        return field_names(tp)  # type: ignore[arg-type]
    for a in typing.get_args(tp):
        if not isinstance(a, (str, int, float, bool)) and (names := _record_keys(a)):
            return names
    return []


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`["epochs=3", "device=cpu"]` -> `{"epochs": "3", "device": "cpu"}` (values parsed by `build`)."""
    out: dict[str, str] = {}
    for a in args:
        if "=" not in a:
            raise ConfigError(f"argument {a!r} is not of the form key=value")
        k, v = a.split("=", 1)
        out[k.strip().replace("-", "_")] = v
    return out


def _passthrough(cls: type) -> tuple[str, frozenset[str]]:
    """(field, keys): a config class may accept another tool's keys into one dict field, e.g. TrainConfig
    takes every Ultralytics train argument into `extra` (`passthrough_keys()` classmethod)."""
    fn = getattr(cls, "passthrough_keys", None)
    if fn is None:
        return "", frozenset()
    return getattr(cls, "passthrough_field", "extra"), frozenset(fn()) - set(field_names(cls))


def check_keys(cls: type, values: dict[str, Any], source: str) -> None:
    """Refuse keys that are neither fields nor pass-through keys, naming the closest of both."""
    known = field_names(cls)
    _, extra = _passthrough(cls)
    where = f" in {source}" if source else ""
    for k in values:
        if k not in known and k not in extra:
            raise ConfigError(f"unknown config key '{k}'{where}{_suggest(k, [*known, *sorted(extra)])}")


def build(cls: type[T], values: dict[str, Any], source: str = "", cli: dict[str, str] | None = None) -> T:
    """Construct `cls` from `values` (JSON/YAML values) updated by `cli` (key=value strings): unknown keys
    refused, pass-through keys gathered into their dict field, types checked by pydantic, then validate()."""
    hints = _hints(cls, extras=False)
    known = field_names(cls)
    pfield, pkeys = _passthrough(cls)
    check_keys(cls, values, source)
    file_source = source if source != "command line" else ""
    if cli:
        source = f"{source} or the command line" if source and source != "command line" else "command line"
    check_keys(cls, cli or {}, "command line")

    def where_of(e: ConfigError) -> str:
        # the key an error names (`key: ...`, `key[0].sub: ...`) came from the command line or from the file
        key = re.split(r"[\[.]", str(e).split(":", 1)[0].strip(), maxsplit=1)[0]
        if cli and key in cli:
            return " (given on the command line)"
        if file_source and key in values:
            return f" in {file_source}"
        return f" in {source}" if source else ""

    merged: dict[str, Any] = {}
    passed: dict[str, Any] = {}
    for items in (values, cli or {}):
        for k, v in items.items():
            if isinstance(v, str):
                v = parse_value(v, k, hints[k] if k in known else Any)
            if k in pkeys:
                passed[k] = v
            elif k == pfield and isinstance(v, dict):
                merged[k] = {**merged.get(k, {}), **v}
            else:
                merged[k] = v
    if pfield and passed:
        merged[pfield] = {**merged.get(pfield, {}), **passed}
    try:
        kwargs = {k: _coerce(v, hints[k], k) for k, v in merged.items()}
    except ConfigError as e:
        raise ConfigError(f"{e}{where_of(e)}") from None
    try:
        obj = cls(**kwargs)  # a config whose __post_init__ checks its fields raises here
    except TypeError as e:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"{source}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{e}{where_of(e)}") from None
    try:
        check_fields(obj)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            validate()
    except ConfigError as e:
        raise ConfigError(f"{e}{where_of(e)}") from None
    return obj


def read_config(path: str | Path | None) -> dict[str, Any]:
    """The whole config.json ({} without a file); errors name the file (and line for bad JSON)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder; give the JSON file (e.g. {p / 'config.json'})")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r})"
        ) from None
    except OSError as e:
        raise ConfigError(f"config file {p}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be an object with sections like 'train'")
    for k, v in data.items():
        if k.startswith(("_", "$")):
            continue
        if not isinstance(v, dict) and k not in SHARED_KEYS:
            raise ConfigError(
                f"{p}: unknown top-level key '{k}'{_suggest(k, [*SHARED_KEYS, *SECTIONS])}; top-level keys "
                f"are sections (objects) or the shared keys {', '.join(SHARED_KEYS)}"
            )
        if isinstance(v, dict) and k not in SECTIONS:
            raise ConfigError(
                f"{p}: unknown section '{k}'{_suggest(k, list(SECTIONS))}; sections are {', '.join(SECTIONS)}"
            )
    return data


def read_section(path: str | Path | None, section: str, fields: list[str] | None = None) -> dict[str, Any]:
    """`config.json[section]` with the shared top-level keys it doesn't set itself ({} when there is no
    file or section). With `fields`, only shared keys that are among them are inherited."""
    data = read_config(path)
    sec = data.get(section, {})
    if not isinstance(sec, dict):
        raise ConfigError(f"{path}: section '{section}' must be an object")
    shared = {k: data[k] for k in SHARED_KEYS if k in data and (fields is None or k in fields)}
    return {**shared, **sec}


def load(cls: type[T], config_path: str | Path | None, section: str, overrides: list[str] | None = None) -> T:
    """Defaults <- shared top-level keys <- config.json[section] <- key=value overrides; validated."""
    values = read_section(config_path, section, field_names(cls))
    source = f"{config_path}[{section}]" if config_path else ""
    return build(cls, values, source or "command line", cli=parse_overrides(overrides or []))


def to_dict(obj: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            # a typed record (a `teachers` entry): its keys as given; unset (None) keys stay unset
            return {
                f.name: conv(getattr(v, f.name))
                for f in dataclasses.fields(v)
                if getattr(v, f.name) is not None
            }
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def save(obj: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (args.yaml style)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
    return p


def require(cond: bool, key: str, msg: str) -> None:
    """`validate()` helper for a rule that relates several fields: raise ConfigError naming `key` unless
    `cond`. A one-field range belongs in the field's annotation instead."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")
