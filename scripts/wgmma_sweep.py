"""Stage b of the flash_wgmma GPU check: flash_wgmma against the float64 reference over
dtypes, head sizes, GQA groups, windows, causal, lengths, sq != sk and varlen."""
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numba import cuda  # noqa: E402

from attn_numba.reference import mha_varlen_fwd_ref  # noqa: E402
from wgmma_check_common import RES, launch, log, problem_for, save  # noqa: E402

def run_v5(p, q, k, v, cu_q, cu_k, **kw):
    dq, dk, dv = (cuda.to_device(x.view(np.uint16)) for x in (q, k, v))
    out = cuda.to_device(np.full(q.shape, 0xFFFF, np.uint16))   # NaN in fp16 and bf16
    lse = cuda.to_device(np.full((1, p.num_heads, p.total_q), np.nan, np.float32))
    launch(p, dq, dk, dv, out, lse, cuda.to_device(cu_q), cuda.to_device(cu_k), 0, **kw)
    cuda.synchronize()
    return out.copy_to_host().view(q.dtype), lse.copy_to_host()


def check_case(rng, dtype, d, group, seq_q, seq_k, window, causal, **kw):
    hkv = 2
    h = hkv * group
    cu_q = np.concatenate([[0], np.cumsum(seq_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(seq_k)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], h, d)).astype(dtype)
    k = rng.standard_normal((cu_k[-1], hkv, d)).astype(dtype)
    v = rng.standard_normal((cu_k[-1], hkv, d)).astype(dtype)
    left, right = window
    if causal:
        right = 0
    p = problem_for(seq_q, seq_k, h, hkv, d, dtype, left, right, causal)
    out, lse = run_v5(p, q, k, v, cu_q, cu_k, **kw)
    kw = dict(causal=causal, window_size=window)
    ref, ref_lse = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, **kw)
    low, _ = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, p_dtype=dtype, **kw)
    low = low.astype(dtype).astype(np.float64)
    floor = 2e-3 if np.dtype(dtype) == np.float16 else 1.6e-2
    tol = 2 * float(np.max(np.abs(low - ref), initial=0)) + floor
    o = out.astype(np.float64)
    err = float(np.max(np.abs(o - ref), initial=0)) if np.all(np.isfinite(o)) else float("nan")
    ref_lse = np.asarray(ref_lse, np.float64).reshape(lse.shape)
    same_inf = np.array_equal(np.isneginf(lse), np.isneginf(ref_lse)) and not np.isnan(lse).any()
    fin = np.isfinite(ref_lse)
    lse_err = float(np.max(np.abs(lse[fin] - ref_lse[fin]), initial=0))
    ok = bool(err <= tol and same_inf and lse_err <= 1e-3 + 1e-4 * np.abs(ref_lse[fin]).max(initial=0))
    return dict(dtype=np.dtype(dtype).name, d=d, group=group, seq_q=list(map(int, seq_q)),
                seq_k=list(map(int, seq_k)), window=window, causal=causal, err=err, tol=tol,
                lse_err=lse_err, lse_inf_match=bool(same_inf), ok=ok)


#: GQA group sizes swept per (dtype, head size): every dtype and head size meets GQA 1 and
#: GQA > 1 somewhere, while the number of compiled specialisations stays at 8
GROUPS = {("float16", 128): (1, 4, 8), ("bfloat16", 128): (1, 4, 8),
          ("float16", 64): (4, 8), ("float16", 256): (8, 4),
          ("bfloat16", 64): (1,), ("bfloat16", 256): (1,)}
WINDOWS = (((-1, -1), False), ((-1, -1), True), ((0, 0), False), ((128, 128), False))


def sweep_cases(dtypes, heads):
    cases = []
    if os.environ.get("WGMMA_CHECK_TINY"):      # dry runs on the simulator: tiny lengths
        return [(dt, d, GROUPS[(np.dtype(dt).name, d)][0], [s], [s + 3], w, c)
                for d in heads for dt in dtypes for s, (w, c) in zip((20, 9), WINDOWS[1:3])]
    for d in heads:
        for dtype in dtypes:
            gs = GROUPS[(np.dtype(dtype).name, d)]
            for i, (window, causal) in enumerate(WINDOWS):
                for j, s in enumerate((97, 1025, 1)):
                    cases.append((dtype, d, gs[(i + j) % len(gs)], [s], [s], window, causal))
            cases.append((dtype, d, gs[0], [200], [1100], (-1, -1), True))      # sq < sk
            cases.append((dtype, d, gs[-1], [300], [77], (128, 128), False))     # sq > sk
            cases.append((dtype, d, gs[0], [130, 0, 7, 513], [64, 0, 300, 513], (-1, -1), True))
            cases.append((dtype, d, gs[-1], [65, 0, 190], [65, 5, 190], (128, 128), False))
    return cases


def sweep(rng, cases, budget_end, key, **kw):
    rows = []
    for c in cases:
        if time.time() > budget_end:
            break
        try:
            row = check_case(rng, *c, **kw)
        except Exception as exc:  # noqa: BLE001
            row = dict(case=str(c), ok=False, error=f"{type(exc).__name__}: {exc}"[:800])
            traceback.print_exc()
        if not row["ok"] and sum(not r["ok"] for r in rows) < 8:   # the first few only
            log("FAIL", key, row)
        rows.append(row)
        RES[key] = dict(run=len(rows), total=len(cases), passed=sum(r["ok"] for r in rows),
                        options=kw, rows=rows)
        save()                  # a stage killed by its timeout still reports what it ran
    RES[key] = dict(run=len(rows), total=len(cases), passed=sum(r["ok"] for r in rows),
                    options=kw, rows=rows)
    save()
    log(f"{key}: {RES[key]['passed']}/{len(rows)} pass ({len(cases)} planned)")


#: variants given a short correctness sweep of their own: (key, options, (head, kind,
#: heads per warpgroup) specialisations it covers)
EXTRA_SWEEPS = (
    ("sweep_overlap", dict(overlap=True, groups=1),
     ((128, "f16", 4), (128, "bf16", 4), (256, "f16", 4), (64, "f16", 4))),
    ("sweep_wg2", dict(overlap=True, groups=2), ((128, "f16", 4), (128, "bf16", 1),
                                                 (64, "f16", 4))),
    ("sweep_wg2_plain", dict(overlap=False, groups=2), ((128, "f16", 1), (64, "f16", 4))),
)
