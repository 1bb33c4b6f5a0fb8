"""Where the instructions go: a summary of an ncu SourceCounters export (the ``sass_v6`` step
of scripts/device_run.sh writes ``v6_sass.csv.gz``), per kernel: warp-level instructions
executed by opcode, then per run of ``--chunk`` consecutive SASS instructions (their total,
the most any one of them executed, and their top opcodes). The per-instruction maximum tells
the regions apart: all warps of a block (12 per block in flash_ws), the consumer warps only
(8), once per key tile, or a wait loop (thousands). No GPU needed.

    python scripts/sass_regions.py results/h200/checks/run40/v6_sass.csv.gz [--kernel v6_flash_ws]
"""
import argparse
import collections
import csv
import gzip
import io
import re


def kernels_of(path):
    """{kernel name: [row dict per SASS instruction]} of an ncu ``--page source --csv``
    export (one "Kernel Name" line, then a header and the rows, per kernel)."""
    out, cur, hdr = {}, None, None
    with gzip.open(path) as f:
        for r in csv.reader(io.TextIOWrapper(f, encoding="utf-8")):
            if not r:
                continue
            if r[0] == "Kernel Name":
                cur, hdr = r[1], None
                out[cur] = []
            elif r[0] == "Address":
                hdr = r
            elif hdr and cur:
                out[cur].append(dict(zip(hdr, r)))
    return out


def opcode(row):
    src = re.sub(r"^@!?U?P\w+\s+", "", row["Source"].strip())
    return src.split(" ")[0].split(".")[0]


def executed(row):
    return int(row["Instructions Executed"] or 0)


def samples(row):
    """Warp-stall samples at this instruction, and their reasons (ncu's ``stall_*``)."""
    why = collections.Counter()
    for k, v in row.items():
        if k.startswith("stall_") and "Not Issued" not in k and v not in ("", "-"):
            why[k[6:]] += int(v)
    return int(row.get("Warp Stall Sampling (All Samples)") or 0), why


def summary(rows, top=25, chunk=40, stalls=False):
    ops = collections.Counter()
    for r in rows:
        ops[opcode(r)] += executed(r)
    lines = [f"total warp-instructions {sum(ops.values()):,}"]
    if stalls:
        n, why = 0, collections.Counter()
        for r in rows:
            k, w = samples(r)
            n += k
            why.update(w)
        lines.append(f"stall samples {n}: " + " ".join(f"{k}:{v}" for k, v in why.most_common(8)))
    lines += [f"   {op:10s} {n:10,d}" for op, n in ops.most_common(top)]
    for c in range(0, len(rows), chunk):
        part = rows[c:c + chunk]
        tot = sum(executed(r) for r in part)
        if not tot:
            continue
        cnt = collections.Counter()
        for r in part:
            cnt[opcode(r)] += executed(r)
        tops = " ".join(f"{o}:{n // 1000}k" for o, n in cnt.most_common(6) if n)
        line = f"{c:5d} {tot:10,d} max/instr {max(executed(r) for r in part):6d}  {tops}"
        if stalls:
            n, why = 0, collections.Counter()
            for r in part:
                k, w = samples(r)
                n += k
                why.update(w)
            line += f" | samples {n:4d} " + " ".join(f"{k}:{v}" for k, v in why.most_common(3))
        lines.append(line)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--kernel", default="", help="a part of the kernel names to show")
    ap.add_argument("--chunk", type=int, default=40)
    ap.add_argument("--stalls", action="store_true",
                    help="warp-stall samples per chunk and their top reasons")
    a = ap.parse_args()
    for name, rows in kernels_of(a.path).items():
        if a.kernel in name:
            print(f"== {name[:100]}")
            print(summary(rows, chunk=a.chunk, stalls=a.stalls))


if __name__ == "__main__":
    main()
