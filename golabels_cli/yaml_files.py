"""YAML files read as untrusted input: config.yaml of a run, a --config file. Size-limited, no
aliases, a mapping or a one-line error naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import InputError, reason
from . import run_files


# A config is a flat mapping of a few dozen options: anything far larger is not one, and YAML's
# aliases are refused because a kilobyte of nested aliases expands to gigabytes.
MAX_YAML_BYTES = 1 << 20


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping: size-limited, no aliases; InputError naming the file otherwise."""
    path = Path(path)
    try:
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "not found"  # a FIFO would block the read for ever
            raise InputError(f"config file {path} {what}", "pass the path of a YAML file")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise InputError(f"config file {path} is larger than {MAX_YAML_BYTES >> 20} MiB", "a golabels config is a short mapping of option names to values")
        text = path.read_text(encoding="utf-8")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise InputError(f"config file {path} uses YAML aliases (*name)", "write each value out")
        data = yaml.safe_load(text)
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
