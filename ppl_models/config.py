"""Run configurations: flat TOML files -> frozen dataclasses, with ``key=value`` overrides.

Every job defines a frozen dataclass of scalar fields (its defaults are the built-in default run)
and validates values in ``__post_init__``. This module reads a TOML file into such a class,
applies command-line overrides, rejects unknown keys with the list of valid ones, and writes the
fully resolved configuration back as TOML.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def load_config(cls: type[C], path: Path | None, overrides: Mapping[str, Any] = ()) -> C:
    """Build ``cls`` from the TOML file ``path`` (defaults when ``None``), then ``overrides``.

    Override values may be strings (as typed on a command line); they are converted to the
    field's type. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file
    that is not TOML, an unknown key, or a value of the wrong type.
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {path} is not valid TOML: {err}") from None
        source = str(path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for origin, mapping in ((source, values), ("overrides", dict(overrides))):
        for key, value in mapping.items():
            if key not in fields:
                raise ValueError(
                    f"unknown config key {key!r} in {origin}; valid keys: {', '.join(fields)}"
                )
            kwargs[key] = _coerce(key, value, hints[key])
    return cls(**kwargs)


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise ``ValueError("<key> must be <expected>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{key} must be {expected}, got {value!r}")


def require_svi_schedule(config: Any) -> None:
    """Validate the SVI schedule fields a fitting config shares: ``steps``, ``particles``,
    ``lr``, ``lr_final`` (geometric decay from ``lr``) and ``average_window`` (the fraction of
    iterates averaged)."""
    for key in ("steps", "particles"):
        value = getattr(config, key)
        require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
    require(config.lr > 0 and math.isfinite(config.lr), "lr", config.lr, "a positive number")
    require(
        0 < config.lr_final <= config.lr,
        "lr_final",
        config.lr_final,
        f"a positive number no larger than lr ({config.lr})",
    )
    require(
        0 < config.average_window <= 1,
        "average_window",
        config.average_window,
        "a fraction in (0, 1]",
    )


def command_line_overrides(pairs: list[str] | None, flags: Mapping[str, Any]) -> dict[str, Any]:
    """``--set key=value`` pairs, then the flags that were given (those not ``None``)."""
    overrides: dict[str, Any] = parse_overrides(pairs)
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return overrides


def load_command_line_config(
    cls: type[C], path: Path | None, default: Path, overrides: Mapping[str, Any], fallback_name: str
) -> tuple[C, str]:
    """The config from ``path``, else ``default`` when that file exists, else the defaults;
    returned with its name: the file's stem, or ``fallback_name`` without a file."""
    if path is None and default.is_file():
        path = default
    return load_config(cls, path, overrides), (Path(path).stem if path else fallback_name)


def add_config_arguments(parser, default: Path) -> None:
    """Add the options every job shares: ``--config FILE`` (``default`` when present) and the
    repeatable ``--set KEY=VALUE`` (read by :func:`command_line_overrides`)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML run configuration (default {default} when present)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a configuration key (repeatable)",
    )


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """Turn ``["steps=100", "lr=0.1"]`` into a dict; a pair without ``=`` is a ``ValueError``."""
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        result[key.strip()] = value.strip()
    return result


def config_to_toml(config: Any) -> str:
    """Write a flat dataclass of scalars as TOML (``None`` is written as an empty string)."""
    lines = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        lines.append(f"{field.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            repr(value)
            if math.isfinite(value)
            else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
        )
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the field type ``hint`` (``T`` or ``T | None``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    target = args[0] if optional and len(args) == 1 else hint
    if optional and (value is None or value == ""):
        return None
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
            raise ValueError
        if target is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        name = getattr(target, "__name__", str(target))
        raise ValueError(f"config key {key!r} expects {name}, got {value!r}") from None
