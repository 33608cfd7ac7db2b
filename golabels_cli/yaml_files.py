"""YAML files read as untrusted input: config.yaml of a run, a --config file. Size-limited, no
aliases, no key twice, no integer longer than an option could take, a mapping or a one-line error
naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import InputError, reason
from . import run_files


# A config is a flat mapping of a few dozen options: anything far larger is not one, and YAML's
# aliases are refused because a kilobyte of nested aliases expands to gigabytes.
MAX_YAML_BYTES = 1 << 20


# No option takes an integer anywhere near this long; Python refuses to convert one of over 4300
# digits, and a longer one is not a typo worth converting.
MAX_INTEGER_DIGITS = 40


def _strict_loader(path: Path) -> type:
    """SafeLoader that refuses a key given twice (also `batch-size` beside `batch_size`: the same
    option) instead of keeping the last, and an integer too long to be any option's value."""

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        seen: dict[Any, tuple[Any, int]] = {}
        for key_node, _ in node.value:
            key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            folded = key.replace("-", "_") if isinstance(key, str) else key
            try:
                first, first_line = seen.setdefault(folded, (key, line))
            except TypeError:
                continue  # an unhashable key: construct_mapping names it
            if first_line != line:
                named = f"{key!r} twice" if first == key else f"one option twice, as {first!r} and {key!r}"
                raise InputError(f"config file {path} gives {named} (lines {first_line} and {line})",
                                 "keep one of them: YAML would silently take the last")
        return loader.construct_mapping(node, deep=True)

    def integer(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
        text = str(node.value)
        if sum(c.isdigit() for c in text) > MAX_INTEGER_DIGITS:
            raise InputError(f"config file {path} has an integer of {sum(c.isdigit() for c in text)} digits at line "
                             f"{node.start_mark.line + 1}", f"no option takes one of more than {MAX_INTEGER_DIGITS} digits")
        return yaml.SafeLoader.construct_yaml_int(loader, node)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor("tag:yaml.org,2002:int", integer)
    return Loader


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping: size-limited, no aliases; InputError naming the file otherwise."""
    path = Path(path)
    try:
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "not found"  # a FIFO would block the read for ever
            raise InputError(f"config file {path} {what}", "pass the path of a YAML file")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise InputError(f"config file {path} is larger than {MAX_YAML_BYTES >> 20} MiB", "a golabels config is a short mapping of "
                                                                                              "option names to values")
        text = path.read_text(encoding="utf-8")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise InputError(f"config file {path} uses YAML aliases (*name)", "write each value out")
        data = yaml.load(text, Loader=_strict_loader(path))  # noqa: S506 - a SafeLoader with two checks added
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {path} is not valid YAML ({reason(exc)})", "fix or regenerate it") from exc
    except OSError as exc:
        raise InputError(f"cannot read config file {path} ({reason(exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must be a mapping of option names to values")
    return data


def read_config_fields(path: str | Path) -> dict[str, Any]:
    """A config file as {field: value}: config.yaml spells its keys as options (batch-size)."""
    return {str(k).replace("-", "_"): v for k, v in read_yaml_mapping(path).items()}


def run_config(folder: str | Path) -> dict[str, Any]:
    """The config.yaml of the run directory `folder` as {field: value}; {} when it is absent or
    cannot be read (the callers only look values up in it)."""
    path = Path(folder) / run_files.CONFIG
    try:
        return read_config_fields(path) if path.is_file() else {}
    except InputError:
        return {}
