"""The CUDA-core backward (kernels/bwd_flash.py) on the simulator, against the float64
reference backward: fresh random inputs, every output and the scratch poisoned with NaN
first, sizes 1, 17, 97 (1025 in a slow case), sq != sk, GQA 1, 4 (8 slow), windows, causal,
varlen with empty sequences, both lse layouts, float32 and float16; determinism; and a real
compile of each kernel for sm_80 and sm_90."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import cuda

from attn_numba.kernels import bwd_flash, get_bwd, launch_plans
from attn_numba.problem import Problem, default_scale, normalize_window
from attn_numba.reference import mha_varlen_fwd_ref
from attn_numba.testing import bwd_references, compare_grads, random_varlen

F16, F32 = np.float16, np.float32


def make_problem(lens_q, lens_k, H, Hkv, D, dtype, window, causal, lse_batched):
    left, right = normalize_window(window, causal)
    return Problem(batch=len(lens_q), total_q=int(sum(lens_q)), total_k=int(sum(lens_k)),
                   max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), num_heads=H,
                   num_kv_heads=Hkv, head_size=D, dtype=np.dtype(dtype),
                   softmax_scale=default_scale(D), window_left=left, window_right=right,
                   causal=causal, lse_batched=lse_batched, on_simulator=True)


def run_backward(problem, dout, q, k, v, out, lse, cu_q, cu_k):
    """Launch the plans on device copies; dq, dk, dv and the scratch start as NaN."""
    host = dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse, cu_seqlens_q=cu_q,
                cu_seqlens_k=cu_k, dq=np.full_like(q, np.nan), dk=np.full_like(k, np.nan),
                dv=np.full_like(v, np.nan))
    for s in bwd_flash.scratch(problem):
        host[s.name] = np.full(s.shape, np.nan, s.dtype)
    dev = {name: cuda.to_device(a) for name, a in host.items()}
    launch_plans(bwd_flash.plan(problem), dev)
    return tuple(dev[n].copy_to_host() for n in ("dq", "dk", "dv"))


def inputs(rng, lens_q, lens_k, H, Hkv, D, dtype, window, causal, lse_batched=False):
    """Random varlen inputs, dout, and the forward's out (in dtype) and lse (float32, in the
    layout ``lse_batched`` says) from the reference."""
    q, k, v, cu_q, cu_k = random_varlen(rng, lens_q, lens_k, H, Hkv, D, dtype)
    dout = rng.standard_normal(q.shape).astype(dtype)
    out, lse = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, causal=causal, window_size=window)
    lse = lse.astype(np.float32)
    if lse_batched:   # (B, H, S): equal lengths
        lse = np.ascontiguousarray(lse.reshape(H, len(lens_q), lens_q[0]).transpose(1, 0, 2))
    else:
        lse = lse[None]
    problem = make_problem(lens_q, lens_k, H, Hkv, D, dtype, window, causal, lse_batched)
    return problem, (dout, q, k, v, out.astype(dtype), lse, cu_q, cu_k)


def check(rng, lens_q, lens_k, H, Hkv, D, dtype, window, causal, lse_batched=False):
    problem, args = inputs(rng, lens_q, lens_k, H, Hkv, D, dtype, window, causal, lse_batched)
    assert bwd_flash.supports(problem) is None
    grads = run_backward(problem, *args)
    dout, q, k, v, _, _, cu_q, cu_k = args
    for g, x in zip(grads, (q, k, v)):
        assert g.shape == x.shape and g.dtype == x.dtype
    refs, lowps = bwd_references(dout, q, k, v, cu_q, cu_k, causal=causal, window_size=window)
    c = compare_grads(grads, refs, lowps, dtype)
    assert c.ok, f"{lens_q} {lens_k} H={H}/{Hkv} D={D} {np.dtype(dtype)} {window} {causal}: {c}"
    return grads


@pytest.mark.parametrize("lens_q,lens_k,H,Hkv,D,dtype,window,causal", [
    ([1], [1], 1, 1, 16, F32, (-1, -1), False),      # size 1
    ([1], [17], 4, 4, 16, F16, (-1, -1), True),      # one query sees every key (bottom-right)
    ([17], [17], 4, 1, 16, F32, (-1, -1), False),    # GQA 4: dk, dv sum over 4 heads
    ([17], [17], 4, 1, 16, F16, (-1, -1), True),
    ([17], [17], 2, 2, 16, F16, (0, 0), False),      # diagonal: P = 1, dq = dk = 0
    ([17], [40], 2, 1, 16, F32, (5, 0), False),      # (W, 0), sq < sk: keys no row sees
    ([40], [17], 2, 2, 16, F16, (-1, -1), True),     # sq > sk: rows with lse = -inf
    ([33], [33], 4, 4, 24, F16, (6, 0), False),      # head size 24 (padded to 32)
    ([97], [97], 2, 1, 16, F16, (-1, -1), True),     # size 97
    ([97], [60], 4, 4, 16, F32, (9, 0), False),
])
def test_matches_reference(rng, lens_q, lens_k, H, Hkv, D, dtype, window, causal):
    check(rng, lens_q, lens_k, H, Hkv, D, dtype, window, causal)


@pytest.mark.parametrize("lens_q,lens_k,H,Hkv,dtype,window,causal", [
    ([0, 11, 3, 0, 9], [5, 0, 13, 0, 9], 4, 1, F16, (4, 2), False),
    ([0, 17, 5], [3, 17, 0], 4, 4, F32, (-1, -1), True),
])
def test_varlen_with_empty_sequences(rng, lens_q, lens_k, H, Hkv, dtype, window, causal):
    dq, dk, _ = check(rng, lens_q, lens_k, H, Hkv, 16, dtype, window, causal)
    cu_k = np.cumsum([0] + lens_k)
    if lens_q[0] == 0:   # keys of a sequence without queries get exactly 0
        assert np.all(dk[cu_k[0]:cu_k[1]] == 0)


def test_batched_lse_layout(rng):
    check(rng, [9, 9], [13, 13], 4, 2, 16, F32, (3, 1), False, lse_batched=True)


def test_deterministic(rng):
    """Two runs give bit-identical gradients (no atomics, the GQA sum in a fixed order)."""
    problem, args = inputs(rng, [23, 10], [19, 30], 4, 1, 16, F32, (-1, -1), True)
    a = run_backward(problem, *args)
    b = run_backward(problem, *args)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()


@pytest.mark.slow
def test_size_1025(rng):
    check(rng, [1025], [1025], 1, 1, 16, F16, (64, 0), False)


@pytest.mark.slow
def test_gqa_8(rng):
    check(rng, [40], [33], 8, 1, 16, F16, (-1, -1), True)


def test_registered_and_contract():
    assert get_bwd("flash") is bwd_flash and bwd_flash.NAME == "flash"
    p = make_problem([5], [7], 4, 2, 16, F16, (-1, -1), False, False)
    (delta,) = bwd_flash.scratch(p)
    assert (delta.name, tuple(delta.shape), np.dtype(delta.dtype)) == ("delta", (4, 5), F32)
    plans = bwd_flash.plan(p)
    assert len(plans) == 3 and plans[0].arrays == ("dout", "out", "delta")
    assert "dq" in plans[2].arrays and {"dk", "dv"} <= set(plans[1].arrays)


def test_supports_and_tiles():
    p = make_problem([5], [7], 4, 2, 16, F16, (-1, -1), False, False)
    assert "dtype" in bwd_flash.supports(dataclasses.replace(p, dtype=np.dtype(np.uint16)))
    assert "head_size" in bwd_flash.supports(dataclasses.replace(p, head_size=320))
    for d, tiles in bwd_flash.GPU_TILES.items():
        bwd_flash.check_tiles(d, tiles)
    with pytest.raises(ValueError, match="bad tiles"):
        bwd_flash.check_tiles(128, (64, 64, 128))   # too much shared memory
    with pytest.raises(ValueError, match="bad tiles"):
        bwd_flash.check_tiles(16, (8, 8, 48))       # NT does not divide BN * D


_COMPILE = r"""
import json, re
import numpy as np
from numba import cuda
from attn_numba.kernels import bwd_flash
rows = []
for label, fn, sig in bwd_flash.compile_targets(128, np.float16):
    for cc in ((8, 0), (9, 0)):
        ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
        rows.append(dict(label=label, cc="%d.%d" % cc, f64=len(re.findall(r"\.f64\b", ptx)),
                         entry=".entry" in ptx))
print(json.dumps(rows))
"""


def test_kernels_compile_to_ptx_for_sm80_and_sm90():
    """The simulator runs Python; this compiles each kernel for real (no GPU needed)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    res = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0 and res.stdout.strip(), res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert {r["label"] for r in rows} == {"bwd_preprocess", "bwd_dkdv_d128", "bwd_dq_d128"}
    assert {r["cc"] for r in rows} == {"8.0", "9.0"}
    assert all(r["entry"] for r in rows)
    assert not [r for r in rows if r["f64"]], rows   # no kernel silently computes in float64


# ---- through the public API (attn_numba.mha_bwd / mha_varlen_bwd), NumPy inputs

def test_api_batched(rng):
    from attn_numba.testing import check_mha_bwd, random_qkv
    q, k, v = random_qkv(rng, 2, 13, 21, 4, 1, 16, F16)
    dout = rng.standard_normal(q.shape).astype(F16)
    check_mha_bwd(dout, q, k, v, "flash", fwd_kernel="flash", causal=True)
    check_mha_bwd(dout, q, k, v, "flash", fwd_kernel="flash", window_size=(4, 0),
                  softmax_scale=0.3)


def test_api_varlen_with_empty_sequences(rng):
    from attn_numba.testing import check_mha_varlen_bwd
    q, k, v, cu_q, cu_k = random_varlen(rng, [0, 9, 4, 0], [6, 0, 11, 0], 4, 2, 16, F32)
    dout = rng.standard_normal(q.shape).astype(F32)
    check_mha_varlen_bwd(dout, q, k, v, cu_q, cu_k, "flash", fwd_kernel="flash",
                         window_size=(3, 3))


def test_api_into_callers_buffers_and_device_arrays(rng):
    import attn_numba
    from attn_numba.testing import bwd_references, compare_grads, random_qkv
    q, k, v = random_qkv(rng, 1, 9, 9, 2, 2, 16, F32)
    dout = rng.standard_normal(q.shape).astype(F32)
    out, lse = attn_numba.mha_fwd(q, k, v, kernel="flash", return_lse=True)
    bufs = [np.full_like(x, np.nan) for x in (q, k, v)]
    got = attn_numba.mha_bwd(dout, q, k, v, out, lse, kernel="flash", dq=bufs[0], dk=bufs[1],
                             dv=bufs[2])
    assert all(g is b for g, b in zip(got, bufs))
    refs, lowps = bwd_references(dout, q, k, v)
    assert compare_grads(got, refs, lowps, F32).ok
    dev = [cuda.to_device(x) for x in (dout, q, k, v, out, lse)]
    dgot = attn_numba.mha_bwd(*dev, kernel="flash")
    for g, h in zip(dgot, got):
        assert not isinstance(g, np.ndarray) and g.shape == h.shape   # device in, device out
        assert g.copy_to_host().tobytes() == h.tobytes()   # same kernel, same bits
