"""GPU-only tests of the call path (issue 10): the caller's stream (torch, CuPy), output types,
out=/lse_out=, CUDA-graph capture and replay, bf16 tensors, and the cuLaunchKernel launcher
against Numba's dispatcher. Skipped on the simulator.

    python -m pytest tests/test_gpu_call_path.py -q -rs
"""
import numpy as np
import pytest

import attn_numba
from attn_numba import callpath, interface, launcher, mha_fwd, mha_varlen_fwd
from attn_numba.testing import random_qkv

pytestmark = pytest.mark.gpu
KERNELS = attn_numba.available_kernels()
FAST = [k for k in ("flash_tc", "flash") if k in KERNELS]
LOG_KW = dict(window_size=(128, 128))


def _torch_qkv(torch, rng, seq=512, dtype=np.float16):
    return tuple(torch.from_numpy(x).cuda() for x in random_qkv(rng, 1, seq, seq, 32, 8, 128, dtype))


@pytest.mark.parametrize("kernel", FAST)
def test_torch_side_stream_gives_the_synchronised_answer(rng, kernel):
    """The issue's failing pattern: q is produced on a busy side stream and used there."""
    torch = pytest.importorskip("torch")
    base, k, v = _torch_qkv(torch, rng)
    ref = mha_fwd(base * 2, k, v, kernel=kernel, **LOG_KW)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    for _ in range(3):
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            torch.cuda._sleep(50_000_000)  # the side stream is busy with earlier work
            q = base * 2
            out = mha_fwd(q, k, v, kernel=kernel, **LOG_KW)
        torch.cuda.current_stream().wait_stream(s)
        assert torch.equal(out, ref)


def test_explicit_streams_with_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    from numba import cuda
    q, k, v = _torch_qkv(torch, rng)
    ref = mha_fwd(q, k, v, **LOG_KW)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    for arg in (s, int(s.cuda_stream), cuda.external_stream(s.cuda_stream)):
        with torch.cuda.stream(s):
            torch.cuda._sleep(20_000_000)
        out = mha_fwd(q, k, v, stream=arg, **LOG_KW)  # launched on s, not the current stream
        s.synchronize()
        assert torch.equal(out, ref)


def test_cupy_side_stream_gives_the_synchronised_answer(rng):
    cp = pytest.importorskip("cupy")
    base, k, v = (cp.asarray(x) for x in random_qkv(rng, 1, 512, 512, 32, 8, 128, np.float16))
    ref = mha_fwd(base * 2, k, v, **LOG_KW)
    cp.cuda.Device().synchronize()
    s = cp.cuda.Stream(non_blocking=True)
    busy = cp.ones((4096, 4096), cp.float32)
    for _ in range(3):
        with s:
            for _ in range(8):
                busy = (busy @ busy) * np.float32(1e-4)  # earlier work on the side stream
            q = base * 2
            out = mha_fwd(q, k, v, **LOG_KW)
        s.synchronize()
        assert isinstance(out, cp.ndarray)
        assert bool((out == ref).all())


def test_output_types_follow_the_inputs(rng):
    torch = pytest.importorskip("torch")
    from numba import cuda
    q, k, v = random_qkv(rng, 1, 256, 256, 8, 2, 128, np.float16)
    tq, tk, tv = (torch.from_numpy(x).cuda() for x in (q, k, v))
    before = torch.cuda.memory_allocated()
    out, lse = mha_fwd(tq, tk, tv, return_lse=True, **LOG_KW)
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
    assert out.dtype == torch.float16 and lse.dtype == torch.float32
    assert out.shape == tq.shape and tuple(lse.shape) == (1, 8, 256) and out.device == tq.device
    assert torch.cuda.memory_allocated() - before >= out.numel() * 2 + lse.numel() * 4
    host = mha_fwd(q, k, v, **LOG_KW)
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(out.cpu().numpy(), host)
    nout, nlse = mha_fwd(*(cuda.to_device(x) for x in (q, k, v)), return_lse=True, **LOG_KW)
    assert cuda.devicearray.is_cuda_ndarray(nout) and cuda.devicearray.is_cuda_ndarray(nlse)
    np.testing.assert_array_equal(nout.copy_to_host(), host)
    cp = pytest.importorskip("cupy")
    cout, clse = mha_fwd(*(cp.asarray(x) for x in (q, k, v)), return_lse=True, **LOG_KW)
    assert isinstance(cout, cp.ndarray) and isinstance(clse, cp.ndarray)
    np.testing.assert_array_equal(cout.get(), host)


def test_out_and_lse_out(rng, monkeypatch):
    torch = pytest.importorskip("torch")
    q, k, v = _torch_qkv(torch, rng)
    ref, ref_lse = mha_fwd(q, k, v, return_lse=True, **LOG_KW)
    out, lse = torch.full_like(q, float("nan")), torch.full_like(ref_lse, float("nan"))
    res, res_lse = mha_fwd(q, k, v, out=out, lse_out=lse, return_lse=True, **LOG_KW)
    assert res is out and res_lse is lse
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)

    def boom(*a, **kw):
        raise AssertionError("launched for bad input")

    monkeypatch.setattr(callpath, "_run", boom)
    bad = [
        (dict(out=torch.empty_like(q, dtype=torch.float32)), TypeError, "out must have dtype"),
        (dict(out=torch.empty(1, 512, 32, 64, dtype=q.dtype, device=q.device)), ValueError,
         "out must have shape"),
        (dict(out=torch.empty(1, 32, 512, 128, dtype=q.dtype, device=q.device).transpose(1, 2)),
         ValueError, "out must be C-contiguous"),
        (dict(out=q), ValueError, "out overlaps q"),
        (dict(out=torch.empty_like(q).cpu()), TypeError, "out"),
        (dict(lse_out=torch.empty(1, 512, 32, device=q.device)), ValueError, "lse_out must have shape"),
        (dict(out=out, lse_out=out.view(torch.float32).reshape(-1)[:32 * 512].view(1, 32, 512)),
         ValueError, "lse_out overlaps out"),
    ]
    for kw, exc, word in bad:
        with pytest.raises(exc, match=word):
            mha_fwd(q, k, v, **kw, **LOG_KW)


@pytest.mark.parametrize("tokens", [512, 2048])
def test_flash_ws_calls_on_two_streams_at_once(rng, tokens):
    """flash_ws reads q, k and v through tensor maps that hold their addresses: calls of one
    specialisation on two streams at the same time must each use their own (every block
    writes its maps into the call's scratch). Before, one set of maps per specialisation
    was rewritten by each call's first launch, and a call could read the other's inputs."""
    torch = pytest.importorskip("torch")
    if "flash_ws" not in KERNELS:
        pytest.skip("flash_ws is not in this build")
    pairs = [_torch_qkv(torch, rng, tokens) for _ in range(2)]
    try:
        refs = [mha_fwd(*qkv, kernel="flash_ws", **LOG_KW).clone() for qkv in pairs]
    except ValueError as exc:      # not a Hopper GPU
        pytest.skip(str(exc))
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream() for _ in range(2)]
    for rnd in range(20):
        outs = []
        for s, qkv in zip(streams, pairs):
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                outs.append(mha_fwd(*qkv, kernel="flash_ws", **LOG_KW))
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        for i, (o, r) in enumerate(zip(outs, refs)):
            assert torch.equal(o, r), f"round {rnd}: the call on stream {i} read other inputs"


def test_flash_ws_graphs_replayed_at_once_and_eager_calls_keep_their_own_maps(rng):
    """torch callers reuse one scratch per stream outside graph capture (callpath._scratch);
    a captured call gets its own. Two graphs of one specialisation replayed at the same time
    on two streams, with eager calls on the current stream between them, each read their own
    inputs, 20 rounds, bit-exact."""
    torch = pytest.importorskip("torch")
    if "flash_ws" not in KERNELS or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("flash_ws needs sm_90")
    from attn_numba import callpath
    triples = [_torch_qkv(torch, rng, 512) for _ in range(3)]
    refs = [mha_fwd(*qkv, kernel="flash_ws", **LOG_KW).clone() for qkv in triples]
    torch.cuda.synchronize()
    assert any(key[0] == "torch" for key in callpath._STREAM_SCRATCH), "no reused scratch"
    graphs, outs = [], []
    for qkv in triples[:2]:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs.append(mha_fwd(*qkv, kernel="flash_ws", **LOG_KW))
        graphs.append(g)
    streams = [torch.cuda.Stream() for _ in range(2)]
    for rnd in range(20):
        for s, g in zip(streams, graphs):
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                g.replay()
        eager = mha_fwd(*triples[2], kernel="flash_ws", **LOG_KW)
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
        for i in range(2):
            assert torch.equal(outs[i], refs[i]), f"round {rnd}: graph {i} read other inputs"
        assert torch.equal(eager, refs[2]), f"round {rnd}: the eager call read other inputs"


def test_flash_ws_reuses_its_maps_only_for_the_same_pointers(rng, monkeypatch):
    """Calls of one specialisation on one stream take the reuse plan (the maps acquired,
    none written) exactly when the last launch on the stream's scratch had the same q, k
    and v (callpath._launch, scratch_reuse); alternating inputs stay bit-exact with each
    input's first call. Numba arrays on a raw stream ask the driver whether it is being
    captured: not here, so their second call takes the reuse plan too."""
    torch = pytest.importorskip("torch")
    if "flash_ws" not in KERNELS or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("flash_ws needs sm_90")
    from numba import cuda

    from attn_numba import scratch_reuse
    monkeypatch.setattr(scratch_reuse, "ENABLED", True)   # ATTN_NUMBA_SCRATCH_REUSE=1
    callpath._SPECS.clear()   # specs made with reuse off have no reuse plan
    callpath._HOT.clear()
    seen = []
    real = scratch_reuse.choose

    def spy(*a):
        got = real(*a)
        seen.append(got[0])
        return got
    monkeypatch.setattr(scratch_reuse, "choose", spy)
    sets = [_torch_qkv(torch, rng, 1024) for _ in range(2)]
    refs = [mha_fwd(*qkv, kernel="flash_ws", **LOG_KW).clone() for qkv in sets]
    order = [0, 0, 0, 1, 1, 0, 1, 0, 0]
    outs = [mha_fwd(*sets[i], kernel="flash_ws", **LOG_KW) for i in order]
    torch.cuda.synchronize()
    for n, (i, o) in enumerate(zip(order, outs)):
        assert torch.equal(o, refs[i]), f"call {n} (inputs {i}) differs from their first"
    assert seen == [False, False] + [False, True, True, False, True, False, False, False, True]
    del seen[:]
    nq, nk, nv = (cuda.as_cuda_array(x) for x in sets[0])
    got = [mha_fwd(nq, nk, nv, kernel="flash_ws", **LOG_KW).copy_to_host() for _ in range(3)]
    assert seen == [False, True, True]
    for o in got:
        assert np.array_equal(o.view(np.uint16), refs[0].cpu().numpy().view(np.uint16))
    callpath._SPECS.clear()
    callpath._HOT.clear()


@pytest.mark.parametrize("kernel", FAST + [k for k in ("flash_ws",) if k in KERNELS])
def test_cuda_graph_capture_and_replay(rng, kernel):
    torch = pytest.importorskip("torch")
    if kernel == "flash_ws" and torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("flash_ws needs sm_90")
    q, k, v = _torch_qkv(torch, rng)
    q2, k2, v2 = _torch_qkv(torch, rng)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up on a side stream, as torch.cuda.graphs recommends
        for _ in range(2):
            mha_fwd(q, k, v, kernel=kernel, **LOG_KW)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out, lse = mha_fwd(q, k, v, kernel=kernel, return_lse=True, **LOG_KW)
    q.copy_(q2)
    k.copy_(k2)
    v.copy_(v2)
    g.replay()
    torch.cuda.synchronize()
    ref, ref_lse = mha_fwd(q2, k2, v2, kernel=kernel, return_lse=True, **LOG_KW)
    torch.cuda.synchronize()
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)


def test_cuda_graph_varlen_with_device_cu_seqlens(rng):
    torch = pytest.importorskip("torch")
    q, k, v = (x.reshape(512, x.shape[2], x.shape[3]) for x in _torch_qkv(torch, rng, 512))
    cu = torch.tensor([0, 100, 512], dtype=torch.int32, device="cuda")
    kw = dict(max_seqlen_q=412, max_seqlen_k=412, **LOG_KW)
    ref = mha_varlen_fwd(q, k, v, cu, cu, **kw).clone()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = mha_varlen_fwd(q, k, v, cu, cu, **kw)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("kernel", KERNELS)
def test_fast_launch_matches_numba_dispatch(rng, kernel, monkeypatch):
    """ctypes cuLaunchKernel, cuda.bindings cuLaunchKernel and Numba's dispatcher give the
    same bits; the bound path is really taken for kernels with plan()."""
    torch = pytest.importorskip("torch")
    q, k, v = _torch_qkv(torch, rng, 300)
    results = {}
    for mode in ("driver", "bindings", "dispatcher"):
        monkeypatch.setattr(launcher, "MODE", mode)
        interface._SPECS.clear()
        interface._HOT.clear()
        try:
            results[mode] = mha_fwd(q, k, v, kernel=kernel, return_lse=True, causal=True, **LOG_KW)
            results[mode] = mha_fwd(q, k, v, kernel=kernel, return_lse=True, causal=True, **LOG_KW)
        except ValueError as exc:
            pytest.skip(str(exc))
        spec = next(iter(interface._SPECS.values()))
        print(f"{kernel} {mode}: bound launch {'ON' if spec.bounds is not None else 'OFF'}")
        if spec.plans is not None and mode != "dispatcher":
            assert spec.bounds is not None, f"the {mode} cuLaunchKernel path was not bound"
    interface._SPECS.clear()
    interface._HOT.clear()
    torch.cuda.synchronize()
    ref, ref_lse = results["dispatcher"]
    for mode in ("driver", "bindings"):
        assert torch.equal(results[mode][0], ref) and torch.equal(results[mode][1], ref_lse), mode


def test_bfloat16_torch_and_numpy(rng):
    torch = pytest.importorskip("torch")
    from attn_numba.arrays import BF16
    from attn_numba.reference import mha_fwd_ref
    q, k, v = random_qkv(rng, 1, 512, 512, 32, 8, 128, np.float32)
    tq, tk, tv = (torch.from_numpy(x).cuda().to(torch.bfloat16) for x in (q, k, v))
    try:
        out = mha_fwd(tq, tk, tv, **LOG_KW)
    except ValueError as exc:
        pytest.skip(f"no bf16 kernel here: {exc}")
    assert out.dtype == torch.bfloat16
    q64, k64, v64 = (x.float().cpu().numpy().astype(np.float64) for x in (tq, tk, tv))
    ref, _ = mha_fwd_ref(q64, k64, v64, **LOG_KW)
    err = float(np.abs(out.float().cpu().numpy() - ref).max())
    assert err < 2e-2, err
    host = mha_fwd(*(x.float().cpu().numpy().astype(BF16) for x in (tq, tk, tv)), **LOG_KW)
    assert host.dtype == BF16
    np.testing.assert_array_equal(host.view(np.uint16), out.cpu().view(torch.int16).numpy().view(np.uint16))


@pytest.mark.parametrize("which", ["q", "out"])
def test_a_misaligned_tensor_is_refused_before_any_launch(rng, monkeypatch, which):
    """A contiguous torch view whose data starts 4 bytes into its storage: the 16-byte
    kernels refuse it with a ValueError naming the argument, and nothing is launched."""
    torch = pytest.importorskip("torch")
    kernel = next((k for k in ("flash_ws", "flash_wgmma", "flash_tc") if k in KERNELS), None)
    if kernel is None:
        pytest.skip("no 16-byte kernel on this device")
    q, k, v = _torch_qkv(torch, rng, seq=64)
    out = torch.empty_like(q)
    mha_fwd(q, k, v, kernel=kernel, out=out)               # aligned: runs
    shifted = torch.empty(q.numel() + 8, dtype=q.dtype, device=q.device)[2:2 + q.numel()]
    shifted = shifted.view(q.shape)
    shifted.copy_(q)
    args = dict(q=q, out=out)
    args[which] = shifted

    def boom(*a, **kw):
        raise AssertionError("launched")
    monkeypatch.setattr(callpath, "_run", boom)
    with pytest.raises(ValueError, match=f"{which}'s data pointer .* not 16-byte aligned"):
        mha_fwd(args["q"], k, v, kernel=kernel, out=args["out"])


@pytest.mark.parametrize("which", ["dout", "q", "dk"])
def test_a_misaligned_tensor_is_refused_by_the_backward_before_any_launch(rng, monkeypatch,
                                                                          which):
    """The same for mha_bwd's tensor-core kernels (16-byte cp.async loads): an input or a
    gradient buffer 4 bytes into its storage is refused, naming it; nothing is launched."""
    torch = pytest.importorskip("torch")
    from attn_numba import mha_bwd
    cc = torch.cuda.get_device_capability()
    kernel = "flash_wgmma" if cc >= (9, 0) else "flash_tc" if cc >= (8, 0) else None
    if kernel is None:
        pytest.skip("no 16-byte backward on this device")
    q, k, v = _torch_qkv(torch, rng, seq=64)
    out, lse = mha_fwd(q, k, v, return_lse=True)
    dout = torch.randn_like(out)
    dk = torch.empty_like(k)
    mha_bwd(dout, q, k, v, out, lse, kernel=kernel, dk=dk)    # aligned: runs
    args = dict(dout=dout, q=q, dk=dk)
    x = args[which]
    shifted = torch.empty(x.numel() + 8, dtype=x.dtype, device=x.device)[2:2 + x.numel()]
    shifted = shifted.view(x.shape)
    shifted.copy_(x)
    args[which] = shifted

    def boom(*a, **kw):
        raise AssertionError("launched")
    monkeypatch.setattr(callpath, "_run", boom)
    monkeypatch.setattr(attn_numba.backward, "_run", boom)
    with pytest.raises(ValueError, match=f"{which}'s data pointer .* not 16-byte aligned"):
        mha_bwd(args["dout"], args["q"], k, v, out, lse, kernel=kernel, dk=args["dk"])
