"""Typed dataclass configs: load from a TOML/JSON file, apply `--section.key=value` overrides.

Every section is a `@dataclass` whose fields carry type, default and a docstring comment; unknown
keys and badly typed values fail with a message naming the key, before anything runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass schema."""


def _finite(value: Any, where: str, expected: str) -> float:
    """`value` as a float; nan and inf are refused because every `> 0` / range check lets nan through."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    return number


def _parse_json(text: str, where: str, expected: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: expected {expected} in JSON, cannot parse {text!r} ({exc.msg})") from None


def _convert_sequence(value: Any, tp: Any, where: str) -> list | tuple:
    """A list (`a,b` or JSON `[...]` on the command line) or a tuple, whose fixed length is checked here."""
    origin, args = get_origin(tp), get_args(tp)
    if isinstance(value, str):
        text = value.strip()
        value = _parse_json(text, where, "a list") if text.startswith("[") else [v for v in text.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_convert(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    item_tp = args[0] if args else Any
    items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    return items if origin is list else tuple(items)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Coerce `value` (from TOML/JSON or a CLI string) into type `tp`, or raise ConfigError.

    Long because it is one dispatch over every supported type (Literal, Optional/Union, bool, int,
    float, str, Path, tuple, list, dict, nested dataclass), each branch a few lines with its own
    error wording; a table of converters would scatter those one-line errors."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot parse {value!r}")
    if origin in (list, tuple):
        return _convert_sequence(value, tp, where)
    if origin is dict:
        if isinstance(value, str):
            value = _parse_json(value, where, "a table")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)  # exact, even beyond float precision (seeds)
        as_float = _finite(value, where, "an integer")
        if as_float != int(as_float):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return _finite(value, where, "a finite number")
    if tp is str:
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict; unknown keys raise ConfigError naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"missing required option --{prefix}{missing[0]}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def to_dict(config: Any) -> dict:
    """The resolved config as plain JSON-able data (stored in checkpoints and logs)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(config)


def read_config_file(path: str | Path) -> dict:
    """Parse a `.toml` or `.json` config file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text(encoding="utf-8"))
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse config: {exc}") from None
    raise ConfigError(f"{path}: config files must be .toml or .json")


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set `data[a][b][c] = value` for `dotted` = "a.b.c", creating sections; a value in the way is an error."""
    node = data
    *parents, leaf = dotted.split(".")
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {'.'.join(parents[:depth + 1])} is a value, not a section")
    node[leaf] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` (or `--section.key=value`) strings onto a nested dict copy."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --section.key=value")
        dotted, value = text.split("=", 1)
        set_dotted(data, dotted, value)
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """File (optional) + overrides → validated dataclass `cls`."""
    data = read_config_file(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)
