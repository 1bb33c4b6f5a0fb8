"""The call path on the simulator: out=/lse_out= and their validation, output types, stream
arguments, the specialisation cache, the Plan contract, and no interface -> warmup import."""
import ast
from pathlib import Path

import numpy as np
import pytest

import attn_numba
from attn_numba import arrays, interface, kernels, launcher, mha_fwd, mha_varlen_fwd
from attn_numba.testing import random_varlen



def _dev(*xs):
    from numba import cuda
    return tuple(cuda.to_device(x) for x in xs)


# --------------------------------------------------------------------------- output types

def test_numpy_in_numpy_out(qkv):
    out, lse = mha_fwd(*qkv, kernel="naive", return_lse=True)
    assert isinstance(out, np.ndarray) and isinstance(lse, np.ndarray)
    assert out.shape == qkv[0].shape and lse.shape == (2, 4, 5) and lse.dtype == np.float32


def test_numba_in_numba_out(qkv):
    from numba import cuda
    ref, ref_lse = mha_fwd(*qkv, kernel="naive", return_lse=True)
    out, lse = mha_fwd(*_dev(*qkv), kernel="naive", return_lse=True)
    assert cuda.devicearray.is_cuda_ndarray(out) and cuda.devicearray.is_cuda_ndarray(lse)
    np.testing.assert_array_equal(out.copy_to_host(), ref)
    np.testing.assert_array_equal(lse.copy_to_host(), ref_lse)


# --------------------------------------------------------------------------- out= / lse_out=

@pytest.mark.parametrize("kernel", ["naive", "tiled", "flash"])
def test_out_and_lse_out_are_written_and_returned(qkv, kernel):
    from numba import cuda
    ref, ref_lse = mha_fwd(*qkv, kernel=kernel, return_lse=True)
    out = cuda.to_device(np.full(ref.shape, np.nan, np.float32))
    lse = cuda.to_device(np.full(ref_lse.shape, np.nan, np.float32))
    res, res_lse = mha_fwd(*_dev(*qkv), kernel=kernel, return_lse=True, out=out, lse_out=lse)
    assert res is out and res_lse is lse
    np.testing.assert_array_equal(out.copy_to_host(), ref)
    np.testing.assert_array_equal(lse.copy_to_host(), ref_lse)


def test_host_out_is_written(qkv):
    ref = mha_fwd(*qkv, kernel="naive")
    out = np.full_like(ref, np.nan)
    lse = np.full((2, 4, 5), np.nan, np.float32)
    res = mha_fwd(*qkv, kernel="naive", out=out, lse_out=lse)
    assert res is out
    np.testing.assert_array_equal(out, ref)
    assert np.all(np.isfinite(lse))


def test_varlen_out(rng):
    q, k, v, cu_q, cu_k = random_varlen(rng, [3, 0, 4], [2, 5, 1], 4, 2, 8, np.float32)
    ref, ref_lse = mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel="flash", return_lse=True)
    out, lse = np.empty_like(ref), np.empty_like(ref_lse)
    mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel="flash", out=out, lse_out=lse)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(lse, ref_lse)


@pytest.mark.parametrize("which,make,exc,word", [
    ("out", lambda q: np.zeros((2, 5, 4, 9), np.float32), ValueError, "out must have shape"),
    ("out", lambda q: np.zeros(q.shape, np.float16), TypeError, "out must have dtype"),
    ("out", lambda q: np.zeros(q.shape[::-1], np.float32).T, ValueError, "out must be C-contig"),
    ("out", lambda q: q, ValueError, "out overlaps q"),
    ("out", lambda q: [0.0], TypeError, "out must be"),
    ("lse_out", lambda q: np.zeros((2, 4, 5), np.float16), TypeError, "lse_out must have dtype"),
    ("lse_out", lambda q: np.zeros((2, 5, 4), np.float32), ValueError, "lse_out must have shape"),
])
def test_bad_out_is_refused(qkv, no_launch, which, make, exc, word):
    with pytest.raises(exc, match=word):
        mha_fwd(*qkv, **{which: make(qkv[0])})


def test_lse_out_overlapping_out_is_refused(qkv, no_launch):
    out = np.zeros(qkv[0].shape, np.float32)
    lse = out.reshape(-1)[:2 * 4 * 5].reshape(2, 4, 5)
    with pytest.raises(ValueError, match="lse_out overlaps out"):
        mha_fwd(*qkv, out=out, lse_out=lse)


def test_device_out_for_host_inputs_is_refused(qkv, no_launch):
    (dout,) = _dev(np.zeros(qkv[0].shape, np.float32))
    with pytest.raises(TypeError, match="out must be a NumPy array"):
        mha_fwd(*qkv, out=dout)
    with pytest.raises(TypeError, match="out must be a CUDA array"):
        mha_fwd(*_dev(*qkv), out=np.zeros(qkv[0].shape, np.float32))


# --------------------------------------------------------------------------- streams

def test_stream_arguments(qkv):
    from numba import cuda
    ref = mha_fwd(*qkv, kernel="naive")
    d = _dev(*qkv)

    class Protocol:
        def __cuda_stream__(self):
            return (0, 0)

    for s in (None, 0, cuda.stream(), cuda.default_stream(), Protocol()):
        np.testing.assert_array_equal(mha_fwd(*d, kernel="naive", stream=s).copy_to_host(), ref)


@pytest.mark.parametrize("stream,exc,word", [
    (True, TypeError, "stream"), (-1, ValueError, "stream"), ("s", TypeError, "stream"),
    (1.5, TypeError, "stream")])
def test_bad_stream_is_refused(qkv, stream, exc, word):
    with pytest.raises(exc, match=word):
        mha_fwd(*_dev(*qkv), kernel="naive", stream=stream)


def test_stream_handles_of_each_framework():
    """torch, CuPy and protocol streams are read without importing torch or CuPy."""
    torch_like = type("Stream", (), {"__module__": "torch.cuda.streams", "cuda_stream": 1234})
    cupy_like = type("Stream", (), {"__module__": "cupy.cuda.stream", "ptr": 99})
    proto = type("S", (), {"__cuda_stream__": lambda self: (0, 77)})
    assert arrays.stream_handle(torch_like()) == 1234
    assert arrays.stream_handle(cupy_like()) == 99
    assert arrays.stream_handle(proto()) == 77
    assert arrays.stream_handle(np.int64(5)) == 5


# --------------------------------------------------------------------------- bf16

def test_bfloat16_is_refused_by_the_cuda_core_kernels(qkv, no_launch):
    if arrays.BF16 is None:
        pytest.skip("ml_dtypes is not installed")
    q, k, v = (x.astype(arrays.BF16) for x in qkv)
    for name in ("naive", "tiled", "flash"):
        with pytest.raises(ValueError, match="bfloat16"):
            mha_fwd(q, k, v, kernel=name)
    if attn_numba.on_simulator():  # the tensor-core kernels cannot run here: auto must say so
        with pytest.raises(ValueError, match="no kernel can run this call"):
            mha_fwd(q, k, v)


# --------------------------------------------------------------------------- cache and plans

def test_a_repeated_call_reuses_its_specialisation(qkv):
    d = _dev(*qkv)
    mha_fwd(*d, kernel="tiled", window_size=(3, 1))
    n = len(interface._SPECS)
    for _ in range(3):
        mha_fwd(*d, kernel="tiled", window_size=(3, 1))
    assert len(interface._SPECS) == n
    mha_fwd(*d, kernel="tiled", window_size=(3, 2))
    assert len(interface._SPECS) == n + 1


@pytest.mark.parametrize("name", ["naive", "tiled", "flash"])
def test_plan_contract(qkv, name):
    """plan() gives Plans; launch_plans of them (what scripts use) equals the public call."""
    from numba import cuda
    mod = kernels.get(name)
    d = _dev(*qkv)
    ref, ref_lse = mha_fwd(*d, kernel=name, return_lse=True)
    spec = next(s for key, s in interface._SPECS.items() if key[:2] == (False, name)
                and key[4:10] == (2, 5, 7, 4, 2, 8) and key[11:14] == (-1, -1, False))
    plans = mod.plan(spec.problem)
    assert plans and all(isinstance(p, kernels.Plan) for p in plans)
    assert all(len(p.views) == 4 for p in plans)
    q3, k3, v3 = (x.reshape(-1, x.shape[2], x.shape[3]) for x in d)
    out = cuda.device_array(q3.shape, np.float32)
    lse = cuda.device_array(ref_lse.shape, np.float32)
    cu_q = cuda.to_device(np.array([0, 5, 10], np.int32))
    cu_k = cuda.to_device(np.array([0, 7, 14], np.int32))
    kernels.launch_plans(plans, kernels.named(kernels.FWD_ARRAYS, q3, k3, v3, out, lse, cu_q,
                                              cu_k), 0)
    np.testing.assert_array_equal(out.copy_to_host().reshape(ref.shape), ref.copy_to_host())
    np.testing.assert_array_equal(lse.copy_to_host(), ref_lse.copy_to_host())


def test_launcher_views_and_parameter_bits():
    assert launcher.viewed((np.float16, (6, 4, 8)), np.uint32) == (np.dtype(np.uint32), (6, 4, 4))
    assert launcher.viewed((np.float16, (6, 4, 8)), "flat") == (np.dtype(np.float16), (192,))
    assert launcher.viewed((np.uint16, (6, 4, 8)), None) == (np.dtype(np.uint16), (6, 4, 8))
    with pytest.raises(ValueError):
        launcher.viewed((np.float16, (6, 4, 3)), np.uint32)
    from numba import types
    assert launcher._scalar_bits(types.float32, 1.0) == 0x3F800000
    assert launcher._scalar_bits(types.int64, -1) == 0xFFFFFFFFFFFFFFFF
    assert launcher._scalar_bits(types.boolean, True) == 1
    # a tuple scalar (flash_ws's template words) takes one slot per member, in order
    words = tuple(np.int64(x) for x in (5, -2, 7))
    assert launcher.scalar_slots((types.float32, types.UniTuple(types.int64, 3), types.int32),
                                 (np.float32(1.0), words, np.int32(3))) == \
        [0x3F800000, 5, 0xFFFFFFFFFFFFFFFE, 7, 3]
    assert launcher.bind_plans((), ()) is None or not attn_numba.on_simulator()


class _FakeParamInfo:
    """Stands in for libcuda's ``cuKernelGetParamInfo``: ``sizes`` per parameter, an error
    (CUDA_ERROR_INVALID_VALUE) past the end; records every index asked."""

    def __init__(self, sizes):
        self.sizes, self.asked = sizes, []

    def __call__(self, handle, j, off, size):
        self.asked.append(j)
        if j >= len(self.sizes):
            return 1
        size._obj.value = self.sizes[j]
        return 0


def _fake_libcuda(monkeypatch, fn):
    lib = type("Lib", (), {})()
    if fn is not None:
        lib.cuKernelGetParamInfo = fn
    monkeypatch.setattr(launcher, "_libcuda", lambda: lib)


def test_param_sizes_never_asks_past_the_expected_count(monkeypatch):
    fake = _FakeParamInfo([8, 8, 4, 8])
    _fake_libcuda(monkeypatch, fake)
    assert launcher._param_sizes(1234, 4) == [8, 8, 4, 8]
    assert fake.asked == [0, 1, 2, 3]  # index 4 is never asked: no refused driver call
    with pytest.raises(NotImplementedError, match="fewer than the 6 parameters"):
        launcher._param_sizes(1234, 6)
    _fake_libcuda(monkeypatch, None)  # a driver without the entry point: no check
    assert launcher._param_sizes(1234, 4) is None


def test_failed_bind_warns_and_falls_back(monkeypatch):
    from numba import config

    class Refuses:
        def __init__(self, plan, specs):
            raise NotImplementedError("kernel parameters of [16] bytes")

    monkeypatch.setattr(launcher, "Bound", Refuses)
    monkeypatch.setattr(launcher, "MODE", "driver")
    monkeypatch.setattr(config, "ENABLE_CUDASIM", 0)
    with pytest.warns(RuntimeWarning, match="fast launch path is unavailable"):
        assert launcher.bind_plans((object(),), ()) is None


def test_interface_does_not_import_warmup():
    src = Path(interface.__file__).read_text()
    names = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    assert not any("warmup" in n for n in names), names


def test_the_validated_fast_path_still_refuses_bad_arguments(qkv):
    """After a valid call, a call with the same arrays but a bad option is refused: the
    shortcut only applies to arguments of the usual types with equal facts."""
    d = _dev(*qkv)
    mha_fwd(*d, kernel="naive", causal=True, window_size=(2, 1), softmax_scale=0.5)
    key_count = len(interface._HOT)
    mha_fwd(*d, kernel="naive", causal=True, window_size=(2, 1), softmax_scale=0.5)
    assert len(interface._HOT) == key_count  # the second call took the shortcut
    for kw, exc in [(dict(causal=1), TypeError), (dict(window_size=(2.0, 1)), TypeError),
                    (dict(softmax_scale=float("nan")), ValueError),
                    (dict(softmax_scale=float("inf")), ValueError)]:
        args = dict(kernel="naive", causal=True, window_size=(2, 1), softmax_scale=0.5)
        args.update(kw)
        with pytest.raises(exc):
            mha_fwd(*d, **args)
    with pytest.raises(ValueError, match="q must be C-contiguous"):
        from numba import cuda
        big = cuda.to_device(np.concatenate([qkv[0], qkv[0]], axis=1))[:, ::2]
        mha_fwd(big, *d[1:], kernel="naive", causal=True, window_size=(2, 1), softmax_scale=0.5)


def test_out_on_the_validated_fast_path(qkv):
    """Repeated calls with out=/lse_out= take the shortcut and still write them; a bad buffer
    after that is still refused with the argument's name."""
    from numba import cuda
    d = _dev(*qkv)
    ref, ref_lse = mha_fwd(*qkv, kernel="flash", window_size=(3, 3), return_lse=True)
    for _ in range(2):
        out = cuda.to_device(np.full(ref.shape, np.nan, np.float32))
        lse = cuda.to_device(np.full(ref_lse.shape, np.nan, np.float32))
        res = mha_fwd(*d, kernel="flash", window_size=(3, 3), out=out, lse_out=lse)
        assert res is out
        np.testing.assert_array_equal(out.copy_to_host(), ref)
        np.testing.assert_array_equal(lse.copy_to_host(), ref_lse)
    with pytest.raises(ValueError, match="lse_out must have shape"):
        mha_fwd(*d, kernel="flash", window_size=(3, 3), out=out,
                lse_out=cuda.device_array((2, 5, 4), np.float32))
    with pytest.raises(TypeError, match="lse_out must be"):
        mha_fwd(*d, kernel="flash", window_size=(3, 3), lse_out=[1.0])


def test_auto_passes_over_a_kernel_that_declines(monkeypatch):
    """``auto`` takes the first kernel that can run a call and does not decline it
    (``auto_declines``, flash_ws below its key-tile count); a named kernel is taken even
    where auto would decline it; the error lists every reason."""
    import types

    from attn_numba import callpath
    from attn_numba.problem import Problem

    def module(name, why_not=None, declines=None):
        mod = types.SimpleNamespace(NAME=name, supports=lambda p: why_not)
        if declines is not None:
            mod.auto_declines = lambda p: declines
        return mod

    table = {"flash_ws": module("flash_ws", declines="too few key tiles"),
             "flash_wgmma": module("flash_wgmma"),
             "flash_tc": module("flash_tc")}
    monkeypatch.setattr(kernels, "get", lambda name, t=None: table.get(name))
    p = Problem(batch=1, total_q=512, total_k=512, max_seqlen_q=512, max_seqlen_k=512,
                num_heads=32, num_kv_heads=8, head_size=128, dtype=np.dtype(np.float16),
                softmax_scale=128 ** -0.5, window_left=128, window_right=128, causal=False,
                lse_batched=False, on_simulator=True)
    assert callpath._resolve_kernel("auto", p).NAME == "flash_wgmma"
    assert callpath._resolve_kernel("flash_ws", p).NAME == "flash_ws"
    table["flash_ws"] = module("flash_ws", declines=None)
    assert callpath._resolve_kernel("auto", p).NAME == "flash_ws"
    table.update(flash_ws=module("flash_ws", declines="too few"),
                 flash_wgmma=module("flash_wgmma", why_not="needs sm_90"),
                 flash_tc=module("flash_tc", why_not="no"))
    monkeypatch.setattr(kernels, "KERNEL_NAMES", ("flash_ws", "flash_wgmma", "flash_tc"))
    monkeypatch.setattr(callpath, "KERNEL_NAMES", ("flash_ws", "flash_wgmma", "flash_tc"))
    with pytest.raises(ValueError, match="flash_ws: too few.*flash_wgmma: needs sm_90"):
        callpath._resolve_kernel("auto", p)


def test_numba_callers_reuse_scratch_per_stream(monkeypatch):
    """Scratch for Numba callers is made once per (device, stream) and reused by the calls on
    that stream (a new device array per call would cost a cuMemAlloc, and Numba's deferred
    cuMemFree waits for the device); another stream gets its own."""
    from attn_numba import callpath
    from attn_numba.arrays import LaunchStream
    from attn_numba.kernels import Scratch

    monkeypatch.setattr(callpath, "_STREAM_SCRATCH", {})
    spec = callpath._Spec(None, None, (), None, None, (), (Scratch("maps", (48,), np.int64),))
    s1, s2 = LaunchStream(11, None, True), LaunchStream(22, None, True)
    a = callpath._scratch(spec, "numba", None, s1, 0)
    b = callpath._scratch(spec, "numba", None, s1, 0)
    c = callpath._scratch(spec, "numba", None, s2, 0)
    assert a is b and a is not c and a[0] is not c[0]
    assert a[0].shape == (48,) and a[0].dtype == np.int64
    assert callpath._scratch(spec, "numba", None, s1, 1) is not a     # another device


def test_torch_callers_reuse_scratch_per_stream_outside_graph_capture(monkeypatch):
    """torch callers on their current stream get one scratch per (device, stream) too (a new
    tensor per call cost about 3 us of host time, run 52); while that stream is being
    captured into a CUDA graph, and on a stream that is not torch's current one, each call
    gets a new buffer from torch's pool (a graph keeps its own; replays on other streams
    then never share one); CuPy callers always get new ones."""
    from attn_numba import callpath
    from attn_numba.arrays import LaunchStream
    from attn_numba.kernels import Scratch

    made = []

    class Buffer:   # a torch tensor's and a CuPy array's data pointer
        def __init__(self, n):
            self.n = n
            self.data = type("Data", (), {"ptr": n})()

        def data_ptr(self):
            return self.n

    def empty(kind, like, shape, dtype, ls, device):
        made.append((kind, like, shape, dtype, ls.handle, device))
        return Buffer(4096 * len(made))

    capturing = [False]
    monkeypatch.setattr(callpath, "_STREAM_SCRATCH", {})
    monkeypatch.setattr(callpath.arrays, "empty", empty)
    monkeypatch.setattr(callpath, "_torch_capturing", lambda: capturing[0])
    spec = callpath._Spec(None, None, (), None, None, (), (Scratch("maps", (48,), np.int64),))
    cur, other, side = LaunchStream(7, None, False), LaunchStream(8, None, False), \
        LaunchStream(9, "a torch stream", True)
    a = callpath._scratch(spec, "torch", "q", cur, 0)
    assert made == [("torch", "q", (48,), np.dtype(np.int64), 7, 0)]
    assert callpath._scratch(spec, "torch", "q", cur, 0) is a and len(made) == 1
    b = callpath._scratch(spec, "torch", "q", other, 0)
    assert b is not a and b[0] is not a[0] and len(made) == 2
    assert callpath._scratch(spec, "torch", "q", cur, 1) is not a      # another device
    assert callpath._scratch(spec, "numba", None, cur, 0) is not a     # another kind
    n = len(made)
    capturing[0] = True
    c1 = callpath._scratch(spec, "torch", "q", cur, 0)
    c2 = callpath._scratch(spec, "torch", "q", cur, 0)
    assert c1 is not a and c1[0] is not c2[0] and len(made) == n + 2
    capturing[0] = False
    assert callpath._scratch(spec, "torch", "q", cur, 0) is a          # the cached one again
    e1 = callpath._scratch(spec, "torch", "q", side, 0)
    e2 = callpath._scratch(spec, "torch", "q", side, 0)
    assert e1[0] is not e2[0]
    g1 = callpath._scratch(spec, "cupy", "q", cur, 0)
    assert g1[0] is not callpath._scratch(spec, "cupy", "q", cur, 0)[0]
    # the data pointers come with the buffers (cached with them)
    for kind, ls in (("torch", cur), ("torch", side), ("cupy", cur)):
        bufs, ptrs = callpath._scratch_entry(spec, kind, "q", ls, 0)[:2]
        assert ptrs == tuple(b.n for b in bufs)
    assert callpath._scratch_entry(spec, "torch", "q", cur, 0)[0] is a


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_a_misaligned_pointer_is_refused_by_the_16_byte_kernels(which):
    """flash_tc, flash_wgmma and flash_ws move 16-byte vectors: a data pointer of q, k, v or
    out 4 bytes off is refused, naming the argument (the call path checks before any launch;
    the simulator has no pointers, so the check is exercised here directly and in
    tests/test_gpu_call_path.py on a GPU); aligned pointers pass."""
    from types import SimpleNamespace

    from attn_numba import callpath
    for name in ("flash_tc", "flash_wgmma", "flash_ws"):
        mod = kernels.get(name)
        assert mod.POINTER_ALIGN == 16
        spec = SimpleNamespace(align=mod.POINTER_ALIGN, mod=mod)
        ptrs = [0x7F0000000000 + 4096 * i for i in range(7)]
        callpath.check_aligned(spec, ptrs)
        ptrs[which] += 4
        arg = ("q", "k", "v", "out")[which]
        with pytest.raises(ValueError, match=f"^{arg}'s data pointer 0x[0-9a-f]+ is not "
                                             f"16-byte aligned: kernel '{name}'"):
            callpath.check_aligned(spec, ptrs)
        ptrs[4] += 4                     # lse: 4-byte stores, not checked
        ptrs[which] -= 4
        callpath.check_aligned(spec, ptrs)
    assert getattr(kernels.get("flash"), "POINTER_ALIGN", 0) == 0


@pytest.mark.parametrize("which", ["dout", "q", "k", "v", "out", "dq", "dk", "dv"])
def test_a_misaligned_pointer_is_refused_by_the_16_byte_backwards(which):
    """The tensor-core backwards (flash_tc, flash_wgmma) load with 16-byte cp.async: a data
    pointer of any fp16/bf16 array 4 bytes off is refused, naming it; lse (float32) and the
    cu_seqlens are not checked."""
    from types import SimpleNamespace

    from attn_numba import backward, callpath
    names = backward.BWD_ALIGNED
    for name in ("flash_tc", "flash_wgmma"):
        mod = kernels.get_bwd(name)
        assert mod.POINTER_ALIGN == 16
        spec = SimpleNamespace(align=mod.POINTER_ALIGN, mod=mod)
        ptrs = [0x7F0000000000 + 4096 * i for i in range(12)]
        ptrs[5] += 4                     # lse: not checked
        ptrs[9] += 4                     # cu_seqlens_q: not checked
        callpath.check_aligned(spec, ptrs, names)
        ptrs[names.index(which)] += 4
        with pytest.raises(ValueError, match=f"^{which}'s data pointer 0x[0-9a-f]+ is not "
                                             f"16-byte aligned: kernel '{name}'"):
            callpath.check_aligned(spec, ptrs, names)
    assert getattr(kernels.get_bwd("flash"), "POINTER_ALIGN", 0) == 0


def _reuse_spec(ready=True):
    from attn_numba import callpath
    from attn_numba.kernels import Scratch
    spec = callpath._Spec(None, None, ("writer",), None, None, (),
                          (Scratch("maps", (48,), np.int64),), (("reader",) if ready else None,
                                                                 None))
    return spec


def test_reuse_plan_only_after_a_writer_with_the_same_spec_and_pointers(monkeypatch):
    """The reuse plan (flash_ws: maps acquired, not written) runs only when the last launch
    on the reused scratch was this spec's writer with the same q, k, v; any other launch on
    the buffer (other pointers, another spec, a module without a reuse plan, a launch that
    raised) changes or clears the record; a capture poisons the buffer for good."""
    from attn_numba import callpath, scratch_reuse
    from attn_numba.arrays import LaunchStream

    ran = []

    def run(spec, ptrs, args, ls, ready=False):
        if ptrs[0] == "boom":
            raise RuntimeError("launch failed")
        ran.append(ready)

    monkeypatch.setattr(callpath, "_run", run)
    monkeypatch.setattr(scratch_reuse, "ENABLED", True)    # ATTN_NUMBA_SCRATCH_REUSE=1
    capturing = [False]
    monkeypatch.setattr(scratch_reuse, "stream_capturing", lambda h: capturing[0])
    ls = LaunchStream(5, None, False)
    a, b, plain = _reuse_spec(), _reuse_spec(), _reuse_spec(ready=False)
    rec = scratch_reuse.Record()

    def call(spec, ptrs, asks=True):
        callpath._launch(spec, rec, ptrs + (0, 0), None, ls, asks)
        return ran[-1]

    p, p2 = (1, 2, 3, 4), (1, 2, 9, 4)
    assert [call(a, p), call(a, p), call(a, p)] == [False, True, True]
    assert call(a, p2) is False and call(a, p) is False and call(a, p) is True
    assert call(a, (1, 2, 3, 99)) is True          # out is not in the maps
    assert call(b, p) is False and call(a, p) is False   # another spec wrote the buffer
    assert call(plain, p) is False and rec.tag is None and call(a, p) is False
    with pytest.raises(RuntimeError):
        callpath._launch(a, rec, ("boom", 2, 3, 4, 0, 0), None, ls, True)
    assert rec.tag is None and call(a, p) is False and call(a, p) is True
    assert callpath._launch(a, None, p, None, ls, True) is None and ran[-1] is False
    for _ in range(2):   # no pointers (the simulator's arrays): never a reuse
        callpath._launch(a, rec, (None, None, None, None, 0, 0), None, ls, True)
        assert ran[-1] is False and rec.tag is None
    capturing[0] = True                             # a graph capture on this stream
    assert call(a, p) is False and rec.poisoned
    capturing[0] = False
    assert [call(a, p), call(a, p)] == [False, False]
    # torch callers' reused buffers imply their stream is not captured: no driver query
    rec2 = scratch_reuse.Record()
    capturing[0] = True
    for want in (False, True):
        callpath._launch(a, rec2, p + (0, 0), None, ls, False)
        assert ran[-1] is want
    monkeypatch.setattr(scratch_reuse, "ENABLED", False)   # the default
    callpath._launch(a, rec2, p + (0, 0), None, ls, False)
    assert ran[-1] is False


def test_scratch_entry_keeps_a_record_only_for_reused_buffers(monkeypatch):
    from attn_numba import callpath, scratch_reuse
    from attn_numba.arrays import LaunchStream
    monkeypatch.setattr(callpath, "_STREAM_SCRATCH", {})
    spec = _reuse_spec()
    s1 = LaunchStream(11, None, True)
    bufs, ptrs, rec = callpath._scratch_entry(spec, "numba", None, s1, 0)
    assert isinstance(rec, scratch_reuse.Record) and rec.tag is None and not rec.poisoned
    assert callpath._scratch_entry(spec, "numba", None, s1, 0)[2] is rec
    buf = type("Buf", (), {"data": type("Data", (), {"ptr": 64})()})
    monkeypatch.setattr(callpath.arrays, "empty", lambda *a: buf())
    assert callpath._scratch_entry(spec, "cupy", "q", s1, 0)[2] is None


def test_scratch_reuse_is_off_by_default():
    """Until the GPU suite has run the reuse path (notes/v6_flash_ws.md, session 11)."""
    import subprocess
    import sys
    env = {k: v for k, v in __import__("os").environ.items()
           if k != "ATTN_NUMBA_SCRATCH_REUSE"}
    code = "from attn_numba import scratch_reuse as s; print(s.ENABLED)"
    for val, want in ((None, "False"), ("1", "True"), ("0", "False")):
        e = dict(env, **({} if val is None else {"ATTN_NUMBA_SCRATCH_REUSE": val}))
        got = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert got == want, (val, got)


def test_stream_capturing_is_false_on_the_simulator():
    from attn_numba import scratch_reuse
    assert scratch_reuse.stream_capturing(0) is False
