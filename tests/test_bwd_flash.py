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
    pytest.param([33], [33], 4, 4, 24, F16, (6, 0), False,    # head size 24 (padded to 32)
                 marks=pytest.mark.slow),
    pytest.param([97], [97], 2, 1, 16, F16, (-1, -1), True,   # size 97
                 marks=pytest.mark.slow),
    pytest.param([97], [60], 4, 4, 16, F32, (9, 0), False, marks=pytest.mark.slow),
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


@pytest.mark.slow
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
import json, re, sys
import numpy as np
from numba import cuda
from numba.cuda.dispatcher import CUDACache
from attn_numba.kernels import bwd_flash

class Codegen:   # the disk-cache key's codegen part is the device's; only the closure matters
    def magic_tuple(self):
        return ("test",)

rows = []
for label, disp, sig in bwd_flash.compile_targets(128, np.float16):
    fn = disp.py_func
    key = lambda: str(CUDACache(fn)._index_key(tuple(sig), Codegen()))
    row = dict(label=label, key_before=key())
    if sys.argv[1] == "compile":
        for cc in ((8, 0), (9, 0)):
            ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
            row["cc%d%d" % cc] = dict(f64=len(re.findall(r"\.f64\b", ptx)), entry=".entry" in ptx)
        row["key_after"] = key()
    rows.append(row)
print(json.dumps(rows))
"""


def _compile_run(mode):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    res = subprocess.run([sys.executable, "-c", _COMPILE, mode], env=env, capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0 and res.stdout.strip(), res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_kernels_compile_to_ptx_for_sm80_and_sm90():
    """The simulator runs Python; this compiles each kernel for real (no GPU needed), and
    checks that Numba's disk-cache key is the same before and after compiling and in a new
    process (else a warm cache never hits; see tests/test_cache_key.py)."""
    rows = _compile_run("compile")
    assert [r["label"] for r in rows] == ["bwd_preprocess", "bwd_dkdv_d128", "bwd_dq_d128"]
    for r in rows:
        for cc in ("cc80", "cc90"):
            assert r[cc]["entry"], (r["label"], cc)
            assert r[cc]["f64"] == 0, (r["label"], cc)   # nothing silently computes in float64
        assert r["key_before"] == r["key_after"], r["label"]
    again = _compile_run("keys")
    assert [r["key_before"] for r in again] == [r["key_before"] for r in rows]


# ---- through the public API (attn_numba.mha_bwd / mha_varlen_bwd), NumPy inputs

@pytest.mark.slow
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


# ---- on a real GPU (skipped on the simulator): the GPU tiles, the log's shape

@pytest.mark.gpu
@pytest.mark.parametrize("b,sq,sk,H,Hkv,D,dtype,window,causal", [
    (1, 8192, 8192, 32, 8, 128, F16, (128, 128), False),   # the log's shape
    (1, 1025, 1025, 8, 1, 64, F16, (-1, -1), True),        # GQA 8
    (2, 97, 300, 4, 4, 256, F32, (32, 0), False),
    (1, 1, 1, 4, 4, 128, F16, (-1, -1), False),
    (1, 700, 513, 8, 2, 80, F16, (0, 0), True),            # sq > sk, padded head size
])
def test_gpu_matches_reference(rng, b, sq, sk, H, Hkv, D, dtype, window, causal):
    from attn_numba.testing import check_mha_bwd, random_qkv
    q, k, v = random_qkv(rng, b, sq, sk, H, Hkv, D, dtype)
    dout = rng.standard_normal(q.shape).astype(dtype)
    check_mha_bwd(dout, q, k, v, "flash", causal=causal, window_size=window)


@pytest.mark.gpu
def test_gpu_deterministic(rng):
    import attn_numba
    from attn_numba.testing import random_qkv
    q, k, v = (cuda.to_device(x) for x in random_qkv(rng, 1, 2048, 2048, 32, 8, 128, F16))
    dout = cuda.to_device(rng.standard_normal(q.shape).astype(F16))
    out, lse = attn_numba.mha_fwd(q, k, v, window_size=(128, 128), return_lse=True)
    a, b = ([g.copy_to_host() for g in attn_numba.mha_bwd(dout, q, k, v, out, lse, kernel="flash",
                                                           window_size=(128, 128))]
            for _ in range(2))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


def test_repeated_calls_build_nothing_again(rng):
    """The kernels come from lru_cached factories keyed by (head dim, tiles): a second call of
    the same specialisation, or one with other lengths, builds nothing."""
    import attn_numba
    from attn_numba.testing import random_qkv
    factories = (bwd_flash.build_preprocess, bwd_flash.build_dkdv, bwd_flash.build_dq,
                 bwd_flash._device_stages)

    def call(sq):
        q, k, v = random_qkv(rng, 1, sq, sq, 2, 1, 16, F32)
        out, lse = attn_numba.mha_fwd(q, k, v, kernel="flash", return_lse=True)
        attn_numba.mha_bwd(q, q, k, v, out, lse, kernel="flash")

    call(5)
    before = [f.cache_info().misses for f in factories]
    call(5)
    call(9)
    assert [f.cache_info().misses for f in factories] == before
