"""Training configs: TOML files, ``--set key=value`` overrides, validation, TOML output.

A config is a plain nested dict with the sections of ``gpucnn.config_schema.SCHEMA``
(model, data, optimizer, loss, schedule, training). ``load_config`` reads a file (or a
shipped config by stem, e.g. ``cifar10-vgg``) over the defaults; ``apply_overrides`` sets
dotted keys (``optimizer.lr=0.05``, ``model.layers[0].kernel_size=3``);
``validate_config`` rejects unknown keys, wrong types and impossible values with a
``ConfigError`` naming the dotted key. Checks that need the input shape (a kernel larger
than its input) happen in ``gpucnn.build``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from gpucnn.atomic import write_text_atomic
from gpucnn.config_schema import SCHEMA, check_table
from gpucnn.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_NAME = "lenet5"
_KEY_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)((?:\[\d+\])*)$")


def shipped_config_dir() -> Path:
    """Directory of the configs shipped with gpucnn: the checkout's configs/ next to the imported
    package first (an editable install of another checkout must not shadow it), else package data."""
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if any(checkout.glob("*.toml")):
        return checkout
    try:
        path = Path(str(resources.files("gpucnn.configs")))
        if path.is_dir() and any(path.glob("*.toml")):
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return checkout


def shipped_config_names() -> list[str]:
    return sorted(p.stem for p in shipped_config_dir().glob("*.toml"))


def resolve_config_path(source: str | os.PathLike) -> Path:
    """A config path as given, or the shipped config whose stem is ``source``."""
    path = Path(source)
    if path.is_file():
        return path
    if path.suffix == "" and os.sep not in str(source):
        shipped = shipped_config_dir() / f"{path.name}.toml"
        if shipped.is_file():
            return shipped
    names = ", ".join(shipped_config_names()) or "none found"
    raise ConfigError(f"config {str(source)!r}: no such file, and no shipped config by that name (shipped: {names})")


def defaults() -> dict:
    """Every section with its default values (``model.layers`` has none: a config must give it)."""
    return {
        section: {name: copy.deepcopy(f.default) for name, f in fields.items() if f.default is not None}
        for section, fields in SCHEMA.items()
    }


# No config nests deeper than a few levels (model.layers[i].body[j]...); a limit far above that
# keeps a hostile file from overflowing the stack in the parser or in merge/validation.
MAX_NESTING = 32


def parse_toml(text: str, source: str) -> dict:
    """The TOML document ``text`` as a dict; ConfigError naming ``source`` when it is malformed or
    nests arrays/tables deeper than ``MAX_NESTING``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except RecursionError:  # the parser recurses once per nested array or inline table
        raise ConfigError(f"{source}: invalid TOML: arrays or tables nested too deeply "
                          f"(a config needs at most {MAX_NESTING} levels)") from None
    if _depth(document) > MAX_NESTING:
        raise ConfigError(f"{source}: arrays or tables nested more than {MAX_NESTING} levels deep; "
                          "no gpucnn config needs that")
    return document


def _depth(value: Any, level: int = 0) -> int:
    """How deeply lists and dicts nest in ``value`` (stops counting past MAX_NESTING)."""
    if level > MAX_NESTING or not isinstance(value, (list, dict)):
        return level
    items = value.values() if isinstance(value, dict) else value
    return max((_depth(v, level + 1) for v in items), default=level + 1)


def load_config(source: str | os.PathLike | None = None) -> dict:
    """Defaults overlaid with the TOML file ``source`` (a path or shipped stem; None = LeNet-5)."""
    path = resolve_config_path(DEFAULT_CONFIG_NAME if source is None else source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    return merge(defaults(), parse_toml(text, str(path)))


def merge(base: dict, overlay: dict) -> dict:
    """A deep copy of ``base`` with ``overlay`` laid over it; tables merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_value(text: str) -> Any:
    """A TOML literal (``0.05``, ``true``, ``[3, 3]``, ``"x"``), else the text as a string."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(f"--set value {text[:40]!r}...: arrays nested too deeply") from None
    if _depth(value) > MAX_NESTING:
        raise ConfigError(f"--set value {text[:40]!r}...: arrays nested more than {MAX_NESTING} levels deep")
    return value


def split_key(dotted: str) -> list[str | int]:
    """``model.layers[3].kernel_size`` -> ["model", "layers", 3, "kernel_size"]."""
    parts: list[str | int] = []
    for piece in dotted.split("."):
        match = _KEY_PART.match(piece.strip())
        if not match:
            raise ConfigError(f"--set {dotted}: malformed key; expected dotted names such as optimizer.lr "
                              f"or model.layers[0].kernel_size")
        parts.append(match.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return parts


def set_key(config: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` (see ``split_key``) in ``config`` in place, creating tables on the way."""
    parts = split_key(dotted)
    node: Any = config
    for i, part in enumerate(parts[:-1]):
        where = _format_key(parts[: i + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise ConfigError(f"{where}: index out of range (the list has {size} entries)")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{_format_key(parts[:i])}: is not a table, cannot set {dotted}")
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"{dotted}: index out of range")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{_format_key(parts[:-1])}: is not a table, cannot set {dotted}")


def _format_key(parts: list[str | int]) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else p)
    return text


def apply_overrides(config: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of ``config`` with each ``key=value`` override applied (values parsed as TOML)."""
    out = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optimizer.lr=0.05")
        set_key(out, key.strip(), parse_value(raw.strip()))
    return out


def validate_config(config: dict) -> dict:
    """The config checked and normalized (defaults filled in, ints widened to floats)."""
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a table, got {config!r}")
    for section in config:
        if section not in SCHEMA:
            raise ConfigError(f"{section}: unknown section; allowed sections: {', '.join(SCHEMA)}")
    out = {}
    for section, fields in SCHEMA.items():
        out[section] = check_table(section, config.get(section, {}), fields)
    _check_cross_fields(out)
    return out


def _check_cross_fields(config: dict) -> None:
    opt, sched = config["optimizer"], config["schedule"]
    if sched["name"] in ("cosine", "linear") and sched["min_lr"] > opt["lr"]:
        raise ConfigError(
            f"schedule.min_lr: got {sched['min_lr']!r}, but it must not exceed optimizer.lr ({opt['lr']!r})"
        )
    if sched["warmup_epochs"] and sched.get("warmup_fraction") is not None:
        raise ConfigError(
            f"schedule.warmup_fraction: give it or schedule.warmup_epochs ({sched['warmup_epochs']!r}), not both"
        )
    if opt["nesterov"] and opt["momentum"] == 0.0:
        raise ConfigError("optimizer.nesterov: true needs optimizer.momentum > 0, got momentum = 0.0")


# ----------------------------------------------------------------------------- TOML output


def dumps_toml(config: dict) -> str:
    """TOML text for a config: top-level tables as [sections], lists of tables as inline tables."""
    lines: list[str] = []
    _dump_table(config, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table: dict, path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append(f"[{'.'.join(_bare_or_quoted(p) for p in path)}]")
    for key, value in scalars.items():
        lines.append(f"{_bare_or_quoted(key)} = {_dump_value(value, top=True)}")
    if path and (scalars or not tables):
        lines.append("")
    for key, value in tables.items():
        _dump_table(value, [*path, key], lines)


def _bare_or_quoted(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _dump_value(value: Any, top: bool = False) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        items = (f"{_bare_or_quoted(k)} = {_dump_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        if top and value and all(isinstance(v, dict) for v in value):
            return "[\n" + "".join(f"    {_dump_value(v)},\n" for v in value) + "]"
        return "[" + ", ".join(_dump_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} as TOML")


def write_config(path: str | os.PathLike, config: dict) -> None:
    write_text_atomic(path, dumps_toml(config))
