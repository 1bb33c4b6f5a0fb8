"""attn_numba.torch on a real GPU: forward and backward against torch float64 autograd of the
math path (FlashAttention's rule), a CUDA-graph capture of forward + backward,
torch.compile(fullgraph=True) and autocast on CUDA tensors.

Run on the GPU machine: ``pytest -q -m gpu tests/test_gpu_torch.py``."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import attn_numba.torch as at  # noqa: E402
from attn_numba.testing import poisoned_outputs  # noqa: E402
from test_torch_ops import TinyAttention, err, fa_bound, math_attention  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU"),
]
DEV = "cuda"
BWD_KERNELS = [("flash", torch.float16), ("flash_tc", torch.float16),
               ("flash_tc", torch.bfloat16), ("auto", torch.bfloat16)]


def _need(bwd_kernel, dtype):
    """Skip when this build lacks the backward kernel (bf16 needs flash_tc, also for auto)."""
    from attn_numba import kernels
    name = "flash_tc" if bwd_kernel == "auto" and dtype == torch.bfloat16 else bwd_kernel
    if name != "auto" and kernels.get_bwd(name) is None:
        pytest.skip(f"backward kernel {name!r} is not in this build")


def _rand(shape, dtype, gen, grad=True):
    return torch.randn(shape, generator=gen, device=DEV).to(dtype).requires_grad_(grad)


def _gen(rng):
    return torch.Generator(device=DEV).manual_seed(int(rng.integers(2**31)))


def _check(q, k, v, out, w, ours, dtype, **kw):
    """Our out and (dq, dk, dv) against float64 autograd, with the bound set by torch's
    same-dtype math path."""
    lo_out, _ = math_attention(q, k, v, **kw)
    lowp = torch.autograd.grad((lo_out * w).sum(), (q, k, v))
    t = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref_out, _ = math_attention(*t, **kw)
    ref = torch.autograd.grad((ref_out * w.double()).sum(), t)
    assert err(out, ref_out) <= fa_bound(lo_out, ref_out, dtype), "out"
    for name, a, lo, r in zip(("dq", "dk", "dv"), ours, lowp, ref):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        assert err(a, r) <= fa_bound(lo, r, dtype), (name, err(a, r), err(lo, r))


CASES = [  # (sq, sk), (h, hkv), d, causal, window
    ((1, 1), (8, 1), 64, False, (-1, -1)),
    ((97, 97), (4, 4), 64, True, (-1, -1)),
    ((97, 250), (8, 2), 128, False, (0, 0)),
    ((250, 97), (8, 1), 128, True, (32, 0)),
    ((1025, 1025), (32, 8), 128, False, (128, 128)),   # the log's shape, shorter
    ((1025, 700), (8, 8), 256, False, (-1, -1)),
]


@pytest.mark.parametrize("bwd_kernel,dtype", BWD_KERNELS)
@pytest.mark.parametrize("s,heads,d,causal,window", CASES)
def test_fwd_bwd_against_float64(rng, bwd_kernel, dtype, s, heads, d, causal, window):
    _need(bwd_kernel, dtype)
    g = _gen(rng)
    q = _rand((2, s[0], heads[0], d), dtype, g)
    k, v = (_rand((2, s[1], heads[1], d), dtype, g) for _ in range(2))
    with poisoned_outputs():
        out = at.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                 backward_kernel=bwd_kernel)
        w = torch.randn_like(out)
        ours = torch.autograd.grad((out * w).sum(), (q, k, v))
    _check(q, k, v, out, w, ours, dtype, causal=causal, window=window)


@pytest.mark.parametrize("bwd_kernel,dtype", BWD_KERNELS)
def test_varlen_fwd_bwd_with_empty_sequences(rng, bwd_kernel, dtype):
    _need(bwd_kernel, dtype)
    lens_q, lens_k = [97, 0, 300, 5, 0], [120, 7, 300, 0, 0]
    g = _gen(rng)
    cu_q, cu_k = (torch.tensor(np.concatenate([[0], np.cumsum(x)]), dtype=torch.int32,
                               device=DEV) for x in (lens_q, lens_k))
    q = _rand((sum(lens_q), 8, 128), dtype, g)
    k, v = (_rand((sum(lens_k), 2, 128), dtype, g) for _ in range(2))
    with poisoned_outputs():
        out = at.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 300, 300, window_size=(64, 0),
                                        backward_kernel=bwd_kernel)
        w = torch.randn_like(out)
        ours = torch.autograd.grad((out * w).sum(), (q, k, v))
    _check(q, k, v, out, w, ours, dtype, window=(64, 0), cu_q=cu_q.cpu(), cu_k=cu_k.cpu())
    assert torch.all(ours[0][397:] == 0)  # the key-less sequence


def test_cuda_graph_forward_and_backward(rng):
    """Warm up on a side stream, capture forward + backward once, replay on new inputs."""
    g = _gen(rng)
    q = _rand((1, 512, 32, 128), torch.float16, g)
    k, v = (_rand((1, 512, 8, 128), torch.float16, g) for _ in range(2))
    w = torch.randn_like(q)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            q.grad = k.grad = v.grad = None
            (at.flash_attn_func(q, k, v, window_size=(128, 128)) * w).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    q.grad = k.grad = v.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = at.flash_attn_func(q, k, v, window_size=(128, 128))
        (out * w).sum().backward()
    new = [torch.randn(x.shape, generator=g, device=DEV, dtype=x.dtype) for x in (q, k, v)]
    with torch.no_grad():
        for x, n in zip((q, k, v), new):
            x.copy_(n)
    graph.replay()
    torch.cuda.synchronize()
    t = [n.clone().requires_grad_() for n in new]
    eager = at.flash_attn_func(*t, window_size=(128, 128))
    grads = torch.autograd.grad((eager * w).sum(), t)
    assert torch.equal(out, eager)  # same kernels, same inputs: bit-identical
    for a, b in zip((q.grad, k.grad, v.grad), grads):
        assert torch.equal(a, b)


def test_compile_fullgraph_training_on_cuda(rng):
    torch._dynamo.reset()
    torch.manual_seed(int(rng.integers(2**31)))
    model = TinyAttention(d=64, heads=8, kv_heads=2).to(DEV, torch.float16)
    twin = TinyAttention(d=64, heads=8, kv_heads=2).to(DEV, torch.float16)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 257, 512, device=DEV, dtype=torch.float16)
    compiled = torch.compile(twin, fullgraph=True)
    for m in (model, compiled):
        m(x).float().square().mean().backward()
    for (name, p), p2 in zip(model.named_parameters(), twin.parameters()):
        assert err(p2.grad, p.grad) <= 1e-2 * p.grad.abs().max().item() + 1e-4, name


@pytest.mark.parametrize("ac_dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda(rng, ac_dtype):
    _need("auto", ac_dtype)
    g = _gen(rng)
    q = _rand((1, 200, 8, 64), torch.float32, g)
    k, v = (_rand((1, 200, 2, 64), torch.float32, g) for _ in range(2))
    with torch.autocast("cuda", dtype=ac_dtype):
        out = at.flash_attn_func(q, k, v, causal=True)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    assert out.dtype == ac_dtype and all(x.dtype == torch.float32 for x in grads)
    t = [x.detach().to(ac_dtype).requires_grad_() for x in (q, k, v)]
    direct = at.flash_attn_func(*t, causal=True)
    dgrads = torch.autograd.grad((direct * w).sum(), t)
    assert torch.equal(out, direct)
    for a, b in zip(grads, dgrads):
        assert torch.equal(a, b.float())
