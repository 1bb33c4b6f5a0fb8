"""mha_bwd / mha_varlen_bwd: argument checks (before any launch) and the call path's plumbing
(scratch buffers, named plan arrays, outputs in the caller's buffers), with a stand-in
backward module on the simulator. The gradients themselves: test_bwd_flash.py."""
import sys
import types

import numpy as np
import pytest
from numba import cuda

import attn_numba
from attn_numba import callpath, kernels
from attn_numba.kernels import BWD_ARRAYS, Plan, Scratch


def _inputs(rng, b=1, sq=5, sk=7, h=4, hkv=2, d=8, dtype=np.float32):
    q = rng.standard_normal((b, sq, h, d)).astype(dtype)
    k = rng.standard_normal((b, sk, hkv, d)).astype(dtype)
    v = rng.standard_normal((b, sk, hkv, d)).astype(dtype)
    dout = rng.standard_normal((b, sq, h, d)).astype(dtype)
    out = rng.standard_normal((b, sq, h, d)).astype(dtype)
    lse = rng.standard_normal((b, h, sq)).astype(np.float32)
    return dout, q, k, v, out, lse


@pytest.mark.parametrize("which,bad,exc,match", [
    ("dout", lambda x: x[:, :-1], ValueError, "dout must have shape"),
    ("out", lambda x: x.astype(np.float16), TypeError, "out must have dtype"),
    ("lse", lambda x: x.astype(np.float64), TypeError, "lse must have dtype float32"),
    ("lse", lambda x: x[:, :, :-1], ValueError, "lse must have shape"),
    ("dout", lambda x: list(x), TypeError, "dout"),
])
def test_bad_inputs_are_refused_naming_the_argument(rng, no_launch, which, bad, exc, match):
    args = dict(zip(("dout", "q", "k", "v", "out", "lse"), _inputs(rng)))
    args[which] = bad(args[which])
    with pytest.raises(exc, match=match):
        attn_numba.mha_bwd(args.pop("dout"), args.pop("q"), args.pop("k"), args.pop("v"),
                           args.pop("out"), args.pop("lse"))


def test_gradient_buffers_that_overlap_are_refused(rng, no_launch):
    dout, q, k, v, out, lse = _inputs(rng)
    with pytest.raises(ValueError, match="dq overlaps dout"):
        attn_numba.mha_bwd(dout, q, k, v, out, lse, dq=dout)
    with pytest.raises(ValueError, match="dk overlaps k"):
        attn_numba.mha_bwd(dout, q, k, v, out, lse, dk=k)
    dk = np.empty_like(k)
    with pytest.raises(ValueError, match="dv overlaps dk"):
        attn_numba.mha_bwd(dout, q, k, v, out, lse, dk=dk, dv=dk)
    with pytest.raises(ValueError, match="dq must have shape"):
        attn_numba.mha_bwd(dout, q, k, v, out, lse, dq=np.empty_like(k))


def test_kernel_names_and_other_arguments(rng, no_launch):
    a = _inputs(rng)
    with pytest.raises(ValueError, match="unknown backward kernel 'tiled'"):
        attn_numba.mha_bwd(*a, kernel="tiled")
    with pytest.raises(TypeError, match="kernel must be a string"):
        attn_numba.mha_bwd(*a, kernel=3)
    with pytest.raises(TypeError, match="causal"):
        attn_numba.mha_bwd(*a, causal=1)
    with pytest.raises(ValueError, match="window_size left"):
        attn_numba.mha_bwd(*a, window_size=(-2, 0))
    dout, q, k, v, out, lse = a
    with pytest.raises(ValueError, match="lse must have shape"):   # varlen lse: (H, total_q)
        attn_numba.mha_varlen_bwd(dout[0], q[0], k[0], v[0], out[0], lse,
                                  np.array([0, 5], np.int32), np.array([0, 7], np.int32))


# --------------------------------------------------------------------------- plumbing

@cuda.jit
def _stage(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, buf, twice):
    i = cuda.grid(1)
    if i < buf.size:
        buf[i] = dout[i] * twice


@cuda.jit
def _finish(buf, dq, dk, dv, k, v):
    i = cuda.grid(1)
    if i < buf.size:
        dq[i] = buf[i]
    if i < dk.size:
        dk[i] = k[i] + 1
        dv[i] = v[i] - 1


def _standin():
    mod = types.ModuleType("attn_numba.kernels._standin_bwd")
    mod.NAME = "flash"
    mod.supports = lambda problem: None
    mod.compile_targets = lambda head_size, dtype: []

    def scratch(p):
        return (Scratch("buf", (p.total_q * p.num_heads * p.head_size,), np.float32),)

    def plan(p):
        n = p.total_q * p.num_heads * p.head_size
        flat = (kernels.FLAT,) * 11
        return (Plan(_stage, (n + 63) // 64, 64, flat, (np.float32(2.0),),
                     arrays=BWD_ARRAYS + ("buf",)),
                Plan(_finish, (n + 63) // 64, 64, (None,) + (kernels.FLAT,) * 5, (),
                     arrays=("buf", "dq", "dk", "dv", "k", "v")))
    mod.scratch, mod.plan = scratch, plan
    return mod


@pytest.fixture
def standin(monkeypatch):
    mod = _standin()
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(kernels._BWD_MODULES, "flash", mod.__name__)
    monkeypatch.setattr(callpath, "_SPECS", {})
    return mod


def test_scratch_and_named_arrays_reach_the_plans(rng, standin):
    dout, q, k, v, out, lse = _inputs(rng)
    dq, dk, dv = attn_numba.mha_bwd(dout, q, k, v, out, lse, kernel="flash")
    np.testing.assert_array_equal(dq, 2 * dout)
    np.testing.assert_array_equal(dk, k + 1)
    np.testing.assert_array_equal(dv, v - 1)
    assert dq.shape == q.shape and dk.shape == k.shape and dq.dtype == q.dtype


def test_device_arrays_and_given_buffers(rng, standin):
    host = _inputs(rng)
    dev = [cuda.to_device(x) for x in host]
    bufs = [cuda.device_array(x.shape, x.dtype) for x in host[1:4]]
    got = attn_numba.mha_bwd(*dev, dq=bufs[0], dk=bufs[1], dv=bufs[2])
    assert all(g is b for g, b in zip(got, bufs))
    np.testing.assert_array_equal(bufs[0].copy_to_host(), 2 * host[0])
    np.testing.assert_array_equal(bufs[2].copy_to_host(), host[3] - 1)


def test_varlen_call_and_an_empty_batch(rng, standin):
    dout, q, k, v, out, lse = (x[0] for x in _inputs(rng))
    lse = np.ascontiguousarray(lse)          # (H, total_q)
    cu_q, cu_k = np.array([0, 2, 2, 5], np.int32), np.array([0, 3, 3, 7], np.int32)
    dq, dk, dv = attn_numba.mha_varlen_bwd(dout, q, k, v, out, lse, cu_q, cu_k)
    np.testing.assert_array_equal(dq, 2 * dout)
    z = np.zeros((0,) + q.shape[1:], q.dtype)
    dq, dk, dv = attn_numba.mha_varlen_bwd(z, z, k, v, z, np.zeros((q.shape[1], 0), np.float32),
                                           np.array([0, 0], np.int32), np.array([0, 7], np.int32))
    assert dq.shape == z.shape and not dk.any() and not dv.any()


def test_deterministic_reaches_the_problem_and_the_spec_key(rng, standin, monkeypatch):
    """``deterministic`` is checked (a bool) before any launch, lands in the Problem the
    module plans from, and keys the cached specialisation (both values plan separately)."""
    seen = []
    plan = standin.plan
    monkeypatch.setattr(standin, "plan", lambda p: (seen.append(p.deterministic), plan(p))[1])
    a = _inputs(rng)
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        attn_numba.mha_bwd(*a, deterministic=1)
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        attn_numba.mha_varlen_bwd(*(x[0] for x in a[:5]), np.ascontiguousarray(a[5][0]),
                                  np.array([0, 5], np.int32), np.array([0, 7], np.int32),
                                  deterministic="no")
    assert seen == []
    dq, _, _ = attn_numba.mha_bwd(*a)
    dq2, _, _ = attn_numba.mha_bwd(*a, deterministic=False)
    attn_numba.mha_bwd(*a, deterministic=False)                      # cached: no new plan
    np.testing.assert_array_equal(dq, dq2)
    assert seen == [True, False]
    dout, q, k, v, out, lse = (x[0] for x in a)
    attn_numba.mha_varlen_bwd(dout, q, k, v, out, np.ascontiguousarray(lse),
                              np.array([0, 5], np.int32), np.array([0, 7], np.int32),
                              deterministic=False)
    assert seen == [True, False, False]
