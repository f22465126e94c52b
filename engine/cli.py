"""One command-line convention for every entry script: a typed config, `--config FILE`, `--section.key=value`.

An entry script declares what it reads as a dataclass (each field with type, default and a `#`
comment; sections are nested dataclasses) and keeps the flags it documented before this convention
as `Flag` aliases:

    config = parse_config(PrepareConfig, argv, __doc__, flags=FLAGS)

Values are taken in this order, later wins: dataclass defaults, `--config FILE` (.toml/.json, keys
mirror the fields), then the command line (`--key=value`, `--key value`, aliases), left to right.
A bool field given bare (`--overwrite`) is true. Every mistake (unknown option, badly typed value,
a choice outside its `Literal`, a missing required field) is one `error:` line on stderr and exit
status 2 before anything is written; `--help` lists every field with its type, default and comment.
`print_config` / `save_config` show the resolved config at start and keep it beside the outputs.

Why hand-written: tyro 1.0.17 and jsonargparse 4.53.0 were both tried on a copy of the optim section.
tyro prints each error as a 5-10 line box and let `--optim.lr=nan` through; jsonargparse prints the
usage plus a two-line error, turns a `__post_init__` ValueError into a traceback, and its `--help`
ignores the `#` field comments this house documents fields with.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence, get_args, get_origin

from engine.config import ConfigError, from_dict, read_config_file, set_dotted, to_dict
from engine.io import atomic_write_text

CONFIG_FILE = "resolved_config.json"  # name of the saved config inside an output folder
_TAKES_VALUE = object()


@dataclass(frozen=True)
class Flag:
    """An option kept under its documented name: `Flag("--seq-len", "shards.seq_lens", many=True)`."""

    name: str  # the option as typed, e.g. --vocab-size
    key: str  # the dotted config field it sets (or, with extra=True, the name it has in the extras)
    value: Any = _TAKES_VALUE  # a switch's fixed value: Flag("--cased", "shards.lowercase", value=False)
    many: bool = False  # takes one or more values up to the next option (--seq-len 128 512)
    extra: bool = False  # not a config field: returned apart (pretrain's --resume, the launcher's --local_rank)
    help: str = ""  # shown by --help for extras (config fields show their own comment)


def exit_without_finalizing(main: typing.Callable[[], int | str | None]) -> typing.NoReturn:
    """Run an entry point's `main` and leave with its exit status, skipping interpreter finalization.

    After a multi-rank run has saved, closed its outputs and left the process group, tearing the
    interpreter down can still abort (SIGABRT, "terminate called without an active exception"):
    gloo worker threads that hold tensors of finished collectives take the GIL while Python is being
    destroyed (pytorch/pytorch#179291). The run is complete by then, but the launcher sees -6, kills
    the other ranks and reports the job failed. So once `main` has returned or exited on purpose,
    flush (and finalize MPI under mpirun) and leave with `os._exit`; an unexpected exception still
    takes the normal path (traceback).
    """
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):  # sys.exit("error: ...") semantics: the message on stderr, status 1
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    mpi = sys.modules.get("mpi4py.MPI")  # launched by mpirun: MPI wants its Finalize, or the job counts as aborted
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    os._exit(0 if code is None else int(code))


def fail(message: str) -> typing.NoReturn:
    """The one-line usage error every entry script gives: `error: ...` on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_config(cls: type, argv: Sequence[str] | None, doc: str | None, flags: Sequence[Flag] = (),
                 positionals: Sequence[str] = (), prog: str | None = None) -> Any:
    """`cls` resolved from defaults, `--config FILE` and the command line; exits 2 with one line on error."""
    config, _ = parse_command(cls, argv, doc, flags, positionals, prog)
    return config


def parse_command(cls: type, argv: Sequence[str] | None, doc: str | None, flags: Sequence[Flag] = (),
                  positionals: Sequence[str] = (), prog: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Like `parse_config`, also returning the values of `extra` flags (absent ones are None)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or Path(sys.argv[0]).name
    if "-h" in argv or "--help" in argv:
        print(help_text(cls, doc, flags, positionals, prog))
        sys.exit(0)
    try:
        config_path, assignments, extras = _read_tokens(cls, argv, flags, positionals)
        data = read_config_file(config_path) if config_path else {}
        for key, value in assignments:
            set_dotted(data, key, value)
        return from_dict(cls, data), extras
    except ConfigError as exc:
        fail(str(exc))


def _read_tokens(cls: type, argv: list[str], flags: Sequence[Flag], positionals: Sequence[str]):
    """(config file, [(dotted key, value)], extras) from the raw arguments, options checked by name."""
    by_name = {flag.name: flag for flag in flags}
    extras = {flag.key: None for flag in flags if flag.extra}
    config_path, assignments, bare = None, [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--":
            bare.append(token)
            continue
        name, has_value, value = token.partition("=")
        flag = by_name.get(name)
        key = flag.key if flag else name[2:]
        if flag is not None and flag.value is not _TAKES_VALUE:
            if has_value:
                raise ConfigError(f"{name} takes no value, got {token!r}")
            if flag.extra:  # a switch that is not a config field (pretrain's --dry-run)
                extras[key] = flag.value
            else:
                assignments.append((key, flag.value))
            continue
        if flag is None and name != "--config":
            try:
                field_type = _field_type(cls, key)
            except ConfigError as exc:
                documented = ", ".join(flag.name for flag in flags)
                raise ConfigError(f"{exc}; documented flags: {documented}" if documented else str(exc)) from None
            if not has_value and field_type is bool:
                assignments.append((key, True))
                continue
        if not has_value:
            if flag is not None and flag.many:
                values = []
                while i < len(argv) and not argv[i].startswith("--"):
                    values.append(argv[i])
                    i += 1
                if not values:
                    raise ConfigError(f"{name} needs at least one value")
                assignments.append((key, values))
                continue
            if i >= len(argv) or argv[i].startswith("--"):
                raise ConfigError(f"{name} needs a value ({name}=VALUE)")
            value = argv[i]
            i += 1
        if name == "--config":
            config_path = value
        elif flag is not None and flag.extra:
            extras[key] = value
        else:
            assignments.append((key, value))
    return config_path, _positional_assignments(cls, bare, positionals) + assignments, extras


def _positional_assignments(cls: type, bare: list[str], positionals: Sequence[str]) -> list[tuple[str, Any]]:
    """Bare arguments fill `positionals` in order; a list-typed last one takes all that remain."""
    assignments = []
    for index, key in enumerate(positionals):
        if not bare:
            break
        takes_rest = index == len(positionals) - 1 and get_origin(_field_type(cls, key)) is list
        assignments.append((key, bare if takes_rest else bare[0]))
        bare = [] if takes_rest else bare[1:]
    if bare:
        raise ConfigError(f"unexpected argument {bare[0]!r} (options look like --key=value)")
    return assignments


def _field_type(cls: type, dotted: str) -> Any:
    """The type of the field `dotted` names inside `cls`; ConfigError naming it when there is none."""
    node, parts = cls, dotted.split(".")
    for depth, part in enumerate(parts):
        node = _strip_optional(node)
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"unknown config key {dotted} ({'.'.join(parts[:depth])} is not a section)")
        hints = typing.get_type_hints(node)
        names = [f.name for f in dataclasses.fields(node) if f.init]
        if part not in names:
            where = ".".join(parts[:depth])
            raise ConfigError(f"unknown config key {dotted} (known{' in ' + where if where else ''}: "
                              f"{', '.join(sorted(names))})")
        node = hints[part]
    return node


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def print_config(config: Any, name: str) -> None:
    """The resolved config on one line at start, so that a log shows exactly what ran."""
    print(f"resolved {name} config: {json.dumps(to_dict(config), default=str)}", flush=True)


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as JSON at `path` (a folder gets `resolved_config.json`), atomically."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    return atomic_write_text(path, json.dumps(to_dict(config), indent=1, default=str) + "\n")


def help_text(cls: type, doc: str | None, flags: Sequence[Flag], positionals: Sequence[str], prog: str) -> str:
    """`--help`: the script's docstring, then every config field with type, default and comment."""
    usage = " ".join([f"usage: {prog}", *(key.upper() for key in positionals), "[--config FILE]", "[--key=value ...]"])
    aliases = flag_aliases(flags)
    lines = [usage, "", (doc or "").strip(), "",
             "options (later wins: defaults < --config FILE (.toml/.json, keys as below) < command line;",
             "a bare bool option means true; lists as a,b or JSON):",
             "  --config FILE  config file whose keys mirror the options below"]
    for flag in flags:
        if flag.extra:
            lines.append(f"  {flag.name} VALUE  {flag.help}")
    lines += _field_lines(cls, "", aliases)
    return "\n".join(lines)


def flag_aliases(flags: Sequence[Flag]) -> dict[str, list[str]]:
    """Config key -> the documented flags that set it, as shown to users (`--cased (= false)`)."""
    aliases: dict[str, list[str]] = {}
    for flag in flags:
        if not flag.extra:
            shown = flag.name if flag.value is _TAKES_VALUE else f"{flag.name} (= {json.dumps(flag.value)})"
            aliases.setdefault(flag.key, []).append(shown + (" V [V ...]" if flag.many else ""))
    return aliases


@dataclass(frozen=True)
class Option:
    """One config field as users see it (`--help`, docs/configuration.md); a section has no type."""

    key: str  # dotted, e.g. optim.lr
    comment: str  # the field's trailing `# comment`
    type_name: str | None = None  # None for a [section]
    default: str = ""  # `default: ...` or `required`


def options(cls: type, prefix: str = "") -> list[Option]:
    """Every init field of `cls`, nested sections first as a section entry then their fields, in order."""
    found = []
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        key, tp = prefix + field.name, hints[field.name]
        if dataclasses.is_dataclass(tp):
            found.append(Option(key, comments.get(field.name, "")))
            found += options(tp, key + ".")
        else:
            found.append(Option(key, comments.get(field.name, ""), _type_name(tp), _default_text(field)))
    return found


def _field_lines(cls: type, prefix: str, aliases: dict[str, list[str]]) -> list[str]:
    lines = []
    for option in options(cls, prefix):
        if option.type_name is None:
            lines.append(f"  [{option.key}]  {option.comment}")
            continue
        also = f"  (also {', '.join(aliases[option.key])})" if option.key in aliases else ""
        lines.append(f"  --{option.key}={option.type_name}  {option.comment} ({option.default}){also}")
    return lines


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    return f"default: {json.dumps(to_dict(value), default=str)}"


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "{" + "|".join(str(a) for a in args) + "}"
    if origin in (typing.Union, types.UnionType):
        return "|".join("none" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        return f"{origin.__name__}[{','.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    if origin is dict:
        return "JSON"
    return {int: "INT", float: "FLOAT", bool: "BOOL", str: "TEXT", Path: "PATH"}.get(tp, getattr(tp, "__name__", str(tp)))


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's trailing `# comment` in the class source: the house style's one-line field docs."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    pattern = re.compile(r"^    (\w+)\s*:[^#]*#\s?(.*)$")
    return {m.group(1): m.group(2).strip() for m in map(pattern.match, source.splitlines()) if m}
