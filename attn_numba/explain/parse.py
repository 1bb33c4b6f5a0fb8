"""Parse an NVBench markdown log (C++ NVBench or Python ``cuda-bench``) into plain dicts.

Reads the ``# Devices`` header (one ``## [i] `name``` block per device), the ``# Log`` section
(``Run:``/``Warn:``/``Pass: Cold:``/``Pass: Batch:``/``Fail:``/``Skip:`` lines; times in ns, us,
ms or s; any other line, such as a Python launcher's own prints, is ignored) and the
``# Benchmark Results`` tables (one per benchmark and device, ``### [i] name``; every column;
repeated ``Samples``/``Noise`` headers named by position). ANSI colour codes are stripped.
Sections may be missing: a table without a Log, a Log without a table (failed states).

Malformed input raises :class:`LogParseError` (a ``ValueError``) whose message names the
1-based line number: a ``Run:`` or ``Pass:`` line that does not parse, a table row whose cell
count differs from its header, a time column holding something that is not a time, or text that
has neither a results table nor a ``Run:`` line.
"""
from __future__ import annotations

import re

from .cells import (_ANSI, _NUM, _SI, _SIZE_UNITS, _TIME, LogParseError, axis_value,
                    parse_time, parse_value)

#: table columns that must hold a time (or be empty) when present
TIME_COLUMNS = ("CPU Time", "GPU Time", "Batch GPU")


def parse_devices(lines):
    """``# Devices`` lines ``[(lineno, text)]`` -> list of dicts (index, name, sm_version, ...)."""
    devices, cur = [], None
    for _, line in lines:
        m = re.match(r"##\s*\[(\d+)\]\s*`?([^`]+)`?", line)
        if m:
            cur = {"index": int(m.group(1)), "name": m.group(2).strip(), "raw": {}}
            devices.append(cur)
            continue
        m = re.match(r"\*\s*([^:]+):\s*(.*)", line)
        if not (m and cur is not None):
            continue
        key, val = m.group(1).strip(), m.group(2).strip()
        cur["raw"][key] = val
        mm = None
        if key == "SM Version" and re.match(r"\d+", val):
            cur["sm_version"] = int(re.match(r"\d+", val).group())
        elif key == "Number of SMs" and val.isdigit():
            cur["num_sms"] = int(val)
        elif key == "SM Default Clock Rate":
            mm = re.match(rf"({_NUM})\s*([KMG]?)Hz", val)
            if mm:
                cur["clock_hz"] = float(mm.group(1)) * _SI[mm.group(2)]
        elif key == "Global Memory Bus Peak":
            mm = re.match(rf"({_NUM})\s*([KMGT]?B)/sec", val)
            if mm:
                cur["bus_peak_Bps"] = float(mm.group(1)) * _SIZE_UNITS[mm.group(2)]
        elif key == "Global Memory":
            mm = re.search(rf"({_NUM})\s*MiB Total", val)
            if mm:
                cur["memory_bytes"] = float(mm.group(1)) * 2 ** 20
    return devices


_WARN_PATTERNS = [
    ("noise_over_threshold",
     rf"timed out \(({_NUM})s\) while over noise threshold \(({_NUM}|inf|nan)% > ({_NUM})%\)",
     ("timeout_s", "noise", "max_noise")),
    ("min_samples",
     rf"timed out \(({_NUM})s\) before accumulating min_samples \((\d+) < (\d+)\)",
     ("timeout_s", "samples", "min_samples")),
    ("noise_samples",
     rf"timed out \(({_NUM})s\) before accumulating enough samples to estimate noise "
     rf"\((\d+) < (\d+)\)", ("timeout_s", "samples", "needed")),
    ("noise_unavailable", rf"timed out \(({_NUM})s\) while unable to estimate noise",
     ("timeout_s",)),
    ("min_time",
     rf"timed out \(({_NUM})s\) before accumulating min_time \(({_NUM})s < ({_NUM})s\)",
     ("timeout_s", "time_s", "min_time_s")),
    ("deadlock", r"(?i)deadlock|blocking kernel", ()),
    ("throttle", r"(?i)throttl", ()),
]


def parse_warning(text):
    """One ``Warn:`` message -> dict(kind, text, numbers...). Unknown messages: kind 'other'."""
    for kind, pat, names in _WARN_PATTERNS:
        m = re.search(pat, text)
        if m:
            d = {"kind": kind, "text": text}
            for name, g in zip(names, m.groups()):
                v = float(g)
                if name in ("noise", "max_noise"):
                    v /= 100.0
                elif name in ("samples", "min_samples", "needed"):
                    v = int(g)
                d[name] = v
            return d
    return {"kind": "other", "text": text}


def parse_run_axes(body, line=None):
    """``Device=0 Kernel=naive seq_len=2^9 ...`` -> (device index or None, {axis: value})."""
    axes = {}
    for m in re.finditer(r"([^\s=]+)=(\S+)(?:\s+=\s+(\S+))?", body):
        axes[m.group(1)] = axis_value(m.group(3) or m.group(2))
    if body.strip() and not axes:
        raise LogParseError(f"Run: line has no Key=Value axes: [{body}]", line)
    dev = axes.pop("Device", None)
    return (dev if isinstance(dev, int) else None), axes


def _parse_pass(which, body, line):
    meas = {"line": line}
    for p in (p.strip() for p in body.split(",")):
        if not p:
            continue
        m = re.fullmatch(rf"({_TIME})\s+(GPU|CPU)", p)
        if m:
            meas[f"{m.group(2).lower()}_time_s"] = parse_time(m.group(1), line)
            continue
        m = re.fullmatch(rf"({_TIME})\s+total\s+(GPU|CPU|wall)", p)
        if m:
            meas[f"total_{m.group(2).lower()}_s"] = parse_time(m.group(1), line)
            continue
        m = re.fullmatch(r"(\d+)\s*x", p)
        if m:
            meas["samples"] = int(m.group(1))
            continue
        if re.search(r"\b(GPU|CPU)\b", p):
            raise LogParseError(f"Pass: {which}: cannot read {p!r}", line)
    return meas


def parse_log_section(lines):
    """``# Log`` lines ``[(lineno, text)]`` -> list of runs.

    Each run: index, total, benchmark, device (index), axes, cold, batch (dicts with
    gpu_time_s, cpu_time_s, total_*_s, samples, warnings), warnings, failures, skipped, other.
    """
    runs, cur, pending = [], None, []
    for no, line in lines:
        line = line.rstrip()
        if line.startswith("Run:"):
            m = re.match(r"^Run:\s+(?:\[(\d+)/(\d+)\]\s+)?(\S+)\s+\[(.*)\]\s*$", line)
            if not m:
                raise LogParseError(f"malformed Run: line {line!r}", no)
            dev, axes = parse_run_axes(m.group(4), no)
            cur = {"index": int(m.group(1)) if m.group(1) else len(runs) + 1,
                   "total": int(m.group(2)) if m.group(2) else None, "benchmark": m.group(3),
                   "device": dev, "axes": axes, "cold": None, "batch": None, "line": no,
                   "warnings": [], "failures": [], "skipped": None, "other": []}
            runs.append(cur)
            pending = []
            continue
        if cur is None:
            continue
        m = re.match(r"^Warn:\s*(.*)$", line)
        if m:
            pending.append(parse_warning(m.group(1).strip()))
            continue
        m = re.match(r"^Pass:\s*(Cold|Batch|CPU Only|CUPTI)\s*:\s*(.*)$", line)
        if m:
            which = m.group(1).lower().replace(" ", "_")
            meas = _parse_pass(which, m.group(2), no)
            for w in pending:
                w["measurement"] = which
            meas["warnings"] = pending
            cur["warnings"].extend(pending)
            pending = []
            cur[which] = meas
            continue
        m = re.match(r"^(Fail|Skip):\s*(.*)$", line)
        if m:
            if m.group(1) == "Fail":
                cur["failures"].append(m.group(2).strip())
            else:
                cur["skipped"] = m.group(2).strip()
            cur["other"].append(line)
        elif re.match(r"^(Info|Note|Pass):", line):
            cur["other"].append(line)
    return runs


def column_keys(header):
    """Unique keys for the table's columns; NVBench repeats 'Samples' and 'Noise'."""
    keys = []
    for i, name in enumerate(header):
        nxt = header[i + 1] if i + 1 < len(header) else ""
        prev = header[i - 1] if i else ""
        if name == "Samples":
            key = "Batch Samples" if nxt.startswith("Batch") else (
                "CPU Samples" if nxt == "CPU Time" and "GPU Time" not in header else "Samples")
        elif name == "Noise":
            key = f"{prev} Noise"
        else:
            key = name
        base, n = key, 2
        while key in keys:
            key, n = f"{base} ({n})", n + 1
        keys.append(key)
    return keys


def _cells(text):
    return [c.strip() for c in text.strip().strip("|").split("|")]


def parse_tables(lines):
    """Result lines ``[(lineno, text)]`` -> list of tables.

    Each table: benchmark, device ({index, name} or None), header, columns, rows (each
    ``{key: {value, kind, raw}}`` plus ``_line``), line.
    """
    tables, bench, device, i = [], None, None, 0
    while i < len(lines):
        no, line = lines[i][0], lines[i][1].strip()
        m = re.match(r"^##\s+(?!#)(?!\[\d+\])(.+?)(?:\s+\(\d+ configurations\))?$", line)
        if m:
            bench, device = m.group(1).strip(), None
        m = re.match(r"^###\s+\[(\d+)\]\s*(.*)$", line)
        if m:
            device = {"index": int(m.group(1)), "name": m.group(2).strip()}
        nxt = lines[i + 1][1].strip() if i + 1 < len(lines) else ""
        if line.startswith("|") and re.match(r"^\|[\s|:-]+\|$", nxt):
            header = _cells(line)
            keys = column_keys(header)
            rows, start = [], no
            i += 2
            while i < len(lines) and lines[i][1].strip().startswith("|"):
                rno, cells = lines[i][0], _cells(lines[i][1])
                if len(cells) != len(header):
                    raise LogParseError(f"table row has {len(cells)} cells, its header "
                                        f"{len(header)}", rno)
                row = {"_line": rno}
                for key, cell in zip(keys, cells):
                    val, kind = parse_value(cell)
                    if key in TIME_COLUMNS and kind not in ("time", "empty"):
                        raise LogParseError(f"column {key!r} holds {cell!r}, not a time", rno)
                    row[key] = {"value": val, "kind": kind, "raw": cell}
                rows.append(row)
                i += 1
            tables.append({"benchmark": bench, "device": device, "header": header,
                           "columns": keys, "rows": rows, "line": start})
            continue
        i += 1
    return tables


def parse_log(text):
    """Parse an NVBench markdown log. Returns {devices, runs, tables}.

    Raises :class:`LogParseError` (a ValueError naming the line) for malformed input.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    if "\x00" in text:
        raise LogParseError("binary data (NUL byte), not an NVBench markdown log",
                            text[:text.index("\x00")].count("\n") + 1)
    lines = [(n, _ANSI.sub("", ln)) for n, ln in enumerate(text.splitlines(), 1)]
    sections, name = {}, None
    for no, line in lines:
        m = re.match(r"^#\s+(.+)$", line)
        if m:
            name = m.group(1).strip()
            sections.setdefault(name, [])
            continue
        if name is not None:
            sections[name].append((no, line))
    devices = parse_devices(sections.get("Devices", []))
    log_lines = sections.get("Log")
    if log_lines is None:  # no '# Log' header: Run: lines may still be there (raw stdout)
        log_lines = [(n, ln) for n, ln in lines
                     if re.match(r"^(Run|Pass|Warn|Fail|Skip|Info):", ln)]
    runs = parse_log_section([(n, ln) for n, ln in log_lines if not ln.startswith("```")])
    tables = parse_tables(sections.get("Benchmark Results", lines if not sections else []))
    if not tables and not runs:
        raise LogParseError("no NVBench results table and no 'Run:' line: not an NVBench "
                            "markdown log")
    return {"devices": devices, "runs": runs, "tables": tables}
