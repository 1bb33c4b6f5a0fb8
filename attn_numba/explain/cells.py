"""Cells of an NVBench markdown log: values with units (ns..s, B..TiB, B/s, %, ``3x``, SI
suffixes, ``2^k``) and the error raised for malformed input."""
from __future__ import annotations

import re

_TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0}
_SIZE_UNITS = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40,
               "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
_SI = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TIME = rf"{_NUM}\s*(?:ns|us|\u00b5s|ms|s)"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\[(?:\d+;)*\d*m(?=\S)")


class LogParseError(ValueError):
    """Malformed NVBench log. ``line`` is the 1-based line number (None: the whole text)."""

    def __init__(self, message, line=None):
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


def parse_value(cell):
    """Parse one NVBench table cell. Returns ``(value, kind)``.

    kinds: ``time`` (seconds), ``size`` (bytes), ``rate_bytes`` (bytes/s), ``percent``
    (a fraction; ``inf%`` -> inf), ``samples`` (int, from ``"3x"``), ``number`` (with SI
    suffix K/M/G/T applied; ``"2^20 = 1048576"`` -> 1048576), ``text``, ``empty`` (None).
    """
    s = cell.strip()
    if not s:
        return None, "empty"
    m = re.fullmatch(rf"({_NUM}|inf|-inf|nan)\s*%", s, re.I)
    if m:
        return float(m.group(1)) / 100.0, "percent"
    m = re.fullmatch(r"(\d+)\s*x", s)
    if m:
        return int(m.group(1)), "samples"
    m = re.fullmatch(rf"({_NUM})\s*(ns|us|\u00b5s|ms|s)", s)
    if m:
        return float(m.group(1)) * _TIME_UNITS[m.group(2)], "time"
    m = re.fullmatch(rf"({_NUM})\s*([KMGT]?i?B)/s", s)
    if m and m.group(2) in _SIZE_UNITS:
        return float(m.group(1)) * _SIZE_UNITS[m.group(2)], "rate_bytes"
    m = re.fullmatch(rf"({_NUM})\s*([KMGT]?i?B)", s)
    if m and m.group(2) in _SIZE_UNITS:
        return float(m.group(1)) * _SIZE_UNITS[m.group(2)], "size"
    m = re.fullmatch(r"2\^(\d+)(?:\s*=\s*(\d+))?", s)
    if m:
        return int(m.group(2)) if m.group(2) else 2 ** int(m.group(1)), "number"
    m = re.fullmatch(rf"({_NUM})\s*([kKMGTP]?)", s)
    if m:
        if not m.group(2) and re.fullmatch(r"[-+]?\d+", m.group(1)):
            return int(m.group(1)), "number"
        return float(m.group(1)) * _SI[m.group(2)], "number"
    return s, "text"


def parse_time(text, line=None):
    """``"5.5s"``, ``"12 us"`` -> seconds; anything else raises :class:`LogParseError`."""
    m = re.fullmatch(rf"\s*({_NUM})\s*(ns|us|\u00b5s|ms|s)\s*", text)
    if not m:
        raise LogParseError(f"not a time: {text.strip()!r}", line)
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def axis_value(text):
    """An axis value from a ``Run:`` line or a table cell: int, float, ``2^k``, else str."""
    v, kind = parse_value(text)
    return v if kind == "number" else text.strip()
