"""Output formats that read back with the standard parsers: CSV rows and JSON text.

File and class names come from the file system, where a name is bytes: one that is not valid
UTF-8 reaches Python as a str holding lone surrogates (PEP 383). CSV writes such a name back as
the bytes it was; JSON text must be UTF-8, so there such a name is written with `\\xNN` for each
byte that does not decode (`café` stored in Latin-1 becomes `caf\\xe9`), and where it is a value,
its raw bytes go beside it, base64-encoded, under the key + `_base64` (a list of names gets a
list, null for each name that needed none). Torch-free: predict uses it with onnxruntime alone.
"""

from __future__ import annotations

import base64
import math
import csv
import io
import json
import re
from typing import Any


def csv_line(cells: list[str]) -> str:
    """One CSV row ending in "\\n". A cell holding a delimiter, a quote or a line break is quoted;
    the csv module leaves a lone "\\r" unquoted when rows end in "\\n", and a reader splits the row
    there, so a row with one is quoted in full."""
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if any("\r" in c for c in cells) else csv.QUOTE_MINIMAL
    csv.writer(buffer, lineterminator="\n", quoting=quoting).writerow(cells)
    return buffer.getvalue()


def undecodable(text: str) -> bytes | None:
    """The raw bytes of a name that is not valid UTF-8 (it holds surrogate escapes), else None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape")  # a file system name: its bytes as they were
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")  # a lone surrogate from elsewhere (JSON's \ud800)


def escaped(text: str) -> str:
    """`text` as valid UTF-8: each byte that does not decode written as \\xNN."""
    raw = undecodable(text)
    return text if raw is None else raw.decode("utf-8", "backslashreplace")


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def utf8_safe(data: Any) -> Any:
    """`data` (dicts, lists, scalars) with every name made valid UTF-8 as the module says, and
    every non-finite number as null."""
    if isinstance(data, str):
        return escaped(data)
    if isinstance(data, (list, tuple)):
        return [utf8_safe(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None  # NaN and infinities are not JSON: a reader's strict parser would refuse the document
    if not isinstance(data, dict):
        return data
    out: dict[Any, Any] = {}
    for key, value in data.items():
        name = escaped(key) if isinstance(key, str) else key
        out[name] = utf8_safe(value)
        if isinstance(value, str) and undecodable(value) is not None:
            out[f"{name}_base64"] = _b64(undecodable(value))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, str) and undecodable(v) is not None for v in value):
            out[f"{name}_base64"] = [_b64(undecodable(v)) if isinstance(v, str) else None for v in value]
    return out


def json_text(data: Any, indent: int | None = 2, ensure_ascii: bool = True) -> str:
    """JSON that is valid UTF-8 whatever names `data` holds (see utf8_safe); ASCII by default,
    which any terminal's encoding can print."""
    return json.dumps(utf8_safe(data), indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)


def printable(text: str) -> str:
    """A name as a figure can draw it: control characters (a class folder named with \r) written
    as their escapes, which no font lacks a glyph for."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
