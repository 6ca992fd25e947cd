"""Shared config plumbing for every entry point.

Each entry point owns one dataclass whose fields are its options. The values come, in order of
precedence, from `key=value` command-line arguments, the entry point's section of `config.json`, and
the dataclass defaults. Unknown keys are refused with the closest known name, values are coerced to
the field's type, and `validate()` checks ranges. The resolved config is saved beside the outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value or key; the message names the key (and the file when there is one)."""


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn `value` (from JSON or a `key=value` string) into the annotated type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot parse {value!r}")
    if origin is typing.Literal:
        if isinstance(value, str) and value not in args:
            for a in args:  # allow `k=1` for Literal[1, ...]
                if str(a) == value:
                    return a
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            s = value.strip()
            value = yaml.safe_load(s) if s.startswith("[") else [v for v in s.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(str(value))
    return value


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`["epochs=3", "device=cpu"]` -> `{"epochs": "3", "device": "cpu"}`."""
    out: dict[str, str] = {}
    for a in args:
        if "=" not in a:
            raise ConfigError(f"argument {a!r} is not of the form key=value")
        k, v = a.split("=", 1)
        out[k.strip().replace("-", "_")] = v
    return out


def build(cls: type[T], values: dict[str, Any], source: str = "") -> T:
    """Construct `cls` from a mapping, refusing unknown keys and coercing types, then validate()."""
    hints = typing.get_type_hints(cls)
    known = field_names(cls)
    kwargs = {}
    where = f" in {source}" if source else ""
    for k, v in values.items():
        if k not in known:
            raise ConfigError(f"unknown config key '{k}'{where}{_suggest(k, known)}")
        kwargs[k] = _coerce(v, hints[k], k)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"{source}: {e}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{e}{where}") from None
    return obj


def read_section(path: str | Path | None, section: str) -> dict[str, Any]:
    """Return `config.json[section]` ({} when there is no file or section); errors name the file."""
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text()
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be an object with sections like '{section}'")
    sec = data.get(section, {})
    if not isinstance(sec, dict):
        raise ConfigError(f"{p}: section '{section}' must be an object")
    return sec


def load(cls: type[T], config_path: str | Path | None, section: str, overrides: list[str] | None = None) -> T:
    """Defaults <- config.json[section] <- key=value overrides; validated."""
    values = dict(read_section(config_path, section))
    source = f"{config_path}[{section}]" if config_path else ""
    # Check file keys first so the error names the file, then the command line.
    build_keys_check(cls, values, source)
    cli = parse_overrides(overrides or [])
    build_keys_check(cls, cli, "command line")
    values.update(cli)
    return build(cls, values, source or "command line")


def build_keys_check(cls: type, values: dict[str, Any], source: str) -> None:
    known = field_names(cls)
    for k in values:
        if k not in known:
            raise ConfigError(f"unknown config key '{k}' in {source}{_suggest(k, known)}")


def to_dict(obj: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
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
    """`validate()` helper: raise ConfigError naming `key` unless `cond`."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")
