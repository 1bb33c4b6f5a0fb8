"""attn_numba.torch on the CPU (the simulator here): the custom ops against torch's float64
math path, their fake and autograd registrations (opcheck), autocast, torch.compile."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import attn_numba  # noqa: E402
from attn_numba.testing import poisoned_outputs  # noqa: E402
import attn_numba.torch as at  # noqa: E402

LOWP = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- the math path

def _attend(q, k, v, scale, left, right):
    """Softmax attention of one sequence in q's dtype: q (sq, H, D), k, v (sk, Hkv, D);
    the bottom-right window rule; a row that sees no key gets output 0 and lse -inf."""
    sq, sk, g = q.shape[0], k.shape[0], q.shape[1] // k.shape[1]
    kh, vh = (x.repeat_interleave(g, 1).transpose(0, 1) for x in (k, v))
    s = scale * (q.transpose(0, 1) @ kh.transpose(1, 2))                 # (H, sq, sk)
    i = torch.arange(sq, device=q.device)[:, None] + sk - sq
    j = torch.arange(sk, device=q.device)[None, :]
    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if left >= 0:
        mask &= j >= i - left
    if right >= 0:
        mask &= j <= i + right
    seen = mask.any(1, keepdim=True)
    p = torch.softmax(s.masked_fill(~(mask | ~seen), -math.inf), -1) * mask
    lse = torch.logsumexp(s.masked_fill(~mask, -math.inf), -1)
    return (p @ vh).transpose(0, 1), lse


def math_attention(q, k, v, scale=None, causal=False, window=(-1, -1), cu_q=None, cu_k=None):
    """(out, lse) of torch's math path, in q's dtype, differentiable; batched q
    (B, S, H, D) -> lse (B, H, S); varlen (cu_q given) -> lse (H, total_q)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    left, right = window[0], 0 if causal else window[1]
    if cu_q is None:
        outs = [_attend(q[b], k[b], v[b], scale, left, right) for b in range(q.shape[0])]
        return torch.stack([o for o, _ in outs]), torch.stack([s for _, s in outs])
    outs = [_attend(q[a:b], k[c:d], v[c:d], scale, left, right) for a, b, c, d in
            zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist())]
    return torch.cat([o for o, _ in outs]), torch.cat([s for _, s in outs], 1)


def err(x, ref):
    return (x.double() - ref.double()).abs().max().item() if x.numel() else 0.0


def fa_bound(lowp, ref, dtype):
    """FlashAttention's rule: at most 2x the error of torch's same-dtype math path + 1e-4."""
    return 2 * err(lowp, ref) + 1e-4 if dtype in LOWP else 1e-4


def rand(shape, dtype, grad=False, gen=None):
    return torch.randn(shape, generator=gen).to(dtype).requires_grad_(grad)


def _gen(rng):
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


def batched_inputs(rng, dtype, b=1, sq=17, sk=17, h=4, hkv=2, d=16, grad=False):
    g = _gen(rng)
    return (rand((b, sq, h, d), dtype, grad, g), rand((b, sk, hkv, d), dtype, grad, g),
            rand((b, sk, hkv, d), dtype, grad, g))


def varlen_inputs(rng, dtype, lens_q, lens_k, h=4, hkv=2, d=16, grad=False):
    g = _gen(rng)
    cu_q = torch.tensor(np.concatenate([[0], np.cumsum(lens_q)]), dtype=torch.int32)
    cu_k = torch.tensor(np.concatenate([[0], np.cumsum(lens_k)]), dtype=torch.int32)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    return (rand((tq, h, d), dtype, grad, g), rand((tk, hkv, d), dtype, grad, g),
            rand((tk, hkv, d), dtype, grad, g), cu_q, cu_k)


def _lse_ok(lse, ref):
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref)), "lse -inf rows differ"
    assert not torch.isnan(lse).any()
    assert err(lse[fin], ref[fin]) <= 1e-4 + 1e-4 * ref[fin].abs().max().item()


# --------------------------------------------------------------------------- forward

FWD_CASES = [  # dtype, (sq, sk), (h, hkv), causal, window
    (torch.float16, (17, 17), (4, 2), True, (-1, -1)),
    (torch.float16, (1, 1), (8, 1), False, (-1, -1)),
    (torch.float32, (9, 23), (4, 1), False, (3, 0)),
    (torch.bfloat16, (23, 9), (4, 4), False, (0, 0)),   # rows 0..13 see no key
]


@pytest.mark.parametrize("dtype,s,heads,causal,window", FWD_CASES)
def test_forward_against_math_path(rng, dtype, s, heads, causal, window):
    q, k, v = batched_inputs(rng, dtype, 1, *s, *heads)
    with poisoned_outputs():
        out, lse = at.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                      return_lse=True)
    ref, ref_lse = math_attention(q.double(), k.double(), v.double(), causal=causal,
                                  window=window)
    lowp, _ = math_attention(q, k, v, causal=causal, window=window)
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (1, heads[0], s[0]) and lse.dtype == torch.float32
    assert err(out, ref) <= fa_bound(lowp, ref, dtype), (err(out, ref), err(lowp, ref))
    _lse_ok(lse, ref_lse)


def test_varlen_forward_with_empty_sequences(rng):
    lens_q, lens_k = [5, 0, 12, 3], [7, 4, 9, 0]  # an empty query and an empty key sequence
    q, k, v, cu_q, cu_k = varlen_inputs(rng, torch.float16, lens_q, lens_k)
    with poisoned_outputs():
        out, lse = at.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 12, 9, causal=True,
                                             return_lse=True, softmax_scale=0.3)
    ref, ref_lse = math_attention(q.double(), k.double(), v.double(), 0.3, True,
                                  cu_q=cu_q, cu_k=cu_k)
    lowp, _ = math_attention(q, k, v, 0.3, True, cu_q=cu_q, cu_k=cu_k)
    assert lse.shape == (4, 20)
    assert err(out, ref) <= fa_bound(lowp, ref, torch.float16)
    assert torch.all(out[17:] == 0)  # the last sequence has no keys
    _lse_ok(lse, ref_lse)


def test_bad_arguments_named():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(TypeError, match="window_size"):
        at.flash_attn_func(q, q, q, window_size=3)
    with pytest.raises(ValueError, match="window_size left"):
        at.flash_attn_func(q, q, q, window_size=(-2, 0))
    with pytest.raises(ValueError, match="unknown kernel"):
        at.flash_attn_func(q, q, q, kernel="fastest")
    with pytest.raises(TypeError, match="k dtype"):
        at.flash_attn_func(q, q.half(), q)
    with pytest.raises(TypeError, match="max_seqlen_q"):
        at.flash_attn_varlen_func(q[0], q[0], q[0], torch.tensor([0, 4], dtype=torch.int32),
                                  torch.tensor([0, 4], dtype=torch.int32), None, 4)
    with pytest.raises(ValueError, match="dropout_p must be 0.0"):
        at.flash_attn_func(q, q, q, 0.1)
    with pytest.raises(TypeError, match="dropout_p must be a number"):
        at.flash_attn_func(q, q, q, None)


def test_flash_attention_positional_order():
    """(q, k, v, dropout_p, softmax_scale, causal, window_size), as FlashAttention has it."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 6, 2, 8, generator=g) for _ in range(3))
    pos = at.flash_attn_func(q, k, v, 0.0, 0.4, True, (2, 0))
    kw = at.flash_attn_func(q, k, v, softmax_scale=0.4, causal=True, window_size=(2, 0))
    assert torch.equal(pos, kw)
    assert not torch.equal(pos, at.flash_attn_func(q, k, v, softmax_scale=0.4))


def test_bad_fake_rank():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="rank 4"):  # the fake says so while tracing too
        torch.ops.attn_numba.fwd(q[0], q[0], q[0], None, False, -1, -1, "auto", "auto")


# --------------------------------------------------------------------------- registrations

def _fwd_args(rng, dtype=torch.float32, grad=False):
    q, k, v = batched_inputs(rng, dtype, 1, 5, 7, 2, 1, 8, grad)
    return (q, k, v, None, True, -1, -1, "auto", "auto")


def _varlen_args(rng, dtype=torch.float32, grad=False):
    q, k, v, cu_q, cu_k = varlen_inputs(rng, dtype, [3, 0, 4], [2, 5, 1], 2, 1, 8, grad)
    return (q, k, v, cu_q, cu_k, 4, 5, 0.5, False, 2, 1, "auto", "auto")


NO_GRAD_UTILS = ("test_schema", "test_faketensor", "test_aot_dispatch_static",
                 "test_aot_dispatch_dynamic", "test_autograd_registration")


@pytest.mark.parametrize("name,args", [("fwd", _fwd_args), ("varlen_fwd", _varlen_args)])
def test_opcheck_forward(rng, name, args):
    res = torch.library.opcheck(getattr(torch.ops.attn_numba, name).default, args(rng),
                                test_utils=NO_GRAD_UTILS)
    assert all(r == "SUCCESS" for r in res.values()), res


@pytest.mark.parametrize("name,args", [("fwd", _fwd_args), ("varlen_fwd", _varlen_args)])
def test_opcheck_forward_with_grad(rng, name, args):
    res = torch.library.opcheck(getattr(torch.ops.attn_numba, name).default,
                                args(rng, grad=True))
    assert all(r == "SUCCESS" for r in res.values()), res


@pytest.mark.parametrize("varlen", [False, True])
def test_opcheck_backward(rng, varlen):
    args = (_varlen_args if varlen else _fwd_args)(rng)
    out, lse = getattr(torch.ops.attn_numba, "varlen_fwd" if varlen else "fwd")(*args)
    dout = torch.randn_like(out)
    rest = args[3:-2] + ("auto",)
    op = torch.ops.attn_numba.varlen_bwd if varlen else torch.ops.attn_numba.bwd
    res = torch.library.opcheck(op.default, (dout, *args[:3], out, lse, *rest))
    assert all(r == "SUCCESS" for r in res.values()), res


def test_fake_shapes(rng):
    from torch._subclasses.fake_tensor import FakeTensorMode
    real = batched_inputs(rng, torch.bfloat16, 2, 6, 9)
    vreal = varlen_inputs(rng, torch.float16, [3, 4], [5, 6])
    with FakeTensorMode() as mode:
        q, k, v = (mode.from_tensor(t) for t in real)
        out, lse = torch.ops.attn_numba.fwd(q, k, v, None, False, -1, -1, "auto", "auto")
        dq, dk, dv = torch.ops.attn_numba.bwd(out, q, k, v, out, lse, None, False, -1, -1,
                                              "auto")
        vq, vk, vv, cq, ck = (mode.from_tensor(t) for t in vreal)
        vout, vlse = torch.ops.attn_numba.varlen_fwd(vq, vk, vv, cq, ck, 4, 6, None, False,
                                                     -1, -1, "auto", "auto")
    assert (out.shape, out.dtype, lse.shape, lse.dtype) == (q.shape, torch.bfloat16,
                                                            (2, 4, 6), torch.float32)
    assert [t.shape for t in (dq, dk, dv)] == [q.shape, k.shape, v.shape]
    assert all(t.dtype == torch.bfloat16 for t in (dq, dk, dv))
    assert (vout.shape, vlse.shape, vlse.dtype) == (vq.shape, (4, 7), torch.float32)


@pytest.mark.parametrize("ac_dtype", [torch.float16, torch.bfloat16])
def test_autocast_casts_inputs(rng, ac_dtype):
    q, k, v = batched_inputs(rng, torch.float32, 1, 6, 6, 2, 1, 8)
    with torch.autocast("cpu", dtype=ac_dtype):
        out, lse = at.flash_attn_func(q, k, v, return_lse=True)
    direct, dlse = at.flash_attn_func(q.to(ac_dtype), k.to(ac_dtype), v.to(ac_dtype),
                                      return_lse=True)
    assert out.dtype == ac_dtype and lse.dtype == torch.float32
    assert torch.equal(out, direct) and torch.equal(lse, dlse)


# --------------------------------------------------------------------------- autograd

def _grads_np(dout, q, k, v, scale, left, right):
    """float64 NumPy gradients of one sequence (the formulas FlashAttention's backward uses:
    dS = P * (dP - rowsum(dO * O)))."""
    sq, sk, g = q.shape[0], k.shape[0], q.shape[1] // k.shape[1]
    i, j = np.arange(sq)[:, None] + sk - sq, np.arange(sk)[None, :]
    mask = np.ones((sq, sk), bool) & ((j >= i - left) if left >= 0 else True) & \
        ((j <= i + right) if right >= 0 else True)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for h in range(q.shape[1]):
        s = np.where(mask, scale * q[:, h] @ k[:, h // g].T, -np.inf)
        m = np.max(s, 1, keepdims=True, initial=-np.inf)
        p = np.where(mask, np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
        p /= np.maximum(p.sum(1, keepdims=True), 1e-300)
        dp = dout[:, h] @ v[:, h // g].T
        ds = p * (dp - (p * dp).sum(1, keepdims=True))
        dv[:, h // g] += p.T @ dout[:, h]
        dq[:, h] = scale * ds @ k[:, h // g]
        dk[:, h // g] += scale * ds.T @ q[:, h]
    return dq, dk, dv


def _standin_bwd(calls):
    """A float64 NumPy stand-in for attn_numba.mha_bwd / mha_varlen_bwd (NumPy in and out, as
    the host path), recording its calls: tests the op wiring, not a kernel."""
    def grads(dout, q, k, v, out, lse, cu_q=None, cu_k=None, *, softmax_scale, causal,
              window_size, kernel, **kw):
        calls.append(dict(kernel=kernel, dout_shape=dout.shape, lse_shape=lse.shape, **kw))
        x = [np.asarray(a, np.float64) for a in (dout, q, k, v)]
        scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
        left, right = window_size[0], 0 if causal else window_size[1]
        if cu_q is None:
            cu_q = np.arange(q.shape[0] + 1) * q.shape[1]
            cu_k = np.arange(k.shape[0] + 1) * k.shape[1]
            x = [a.reshape(-1, *a.shape[2:]) for a in x]
        res = [np.zeros_like(a) for a in x[1:]]
        for a, b, c, d in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]):
            gs = _grads_np(x[0][a:b], x[1][a:b], x[2][c:d], x[3][c:d], scale, left, right)
            for r, gr, (lo, hi) in zip(res, gs, ((a, b), (c, d), (c, d))):
                r[lo:hi] = gr
        return tuple(r.reshape(t.shape).astype(t.dtype) for r, t in zip(res, (q, k, v)))
    return grads


def test_autograd_wiring_with_standin_backward(rng, monkeypatch):
    calls = []
    monkeypatch.setattr(attn_numba, "mha_bwd", _standin_bwd(calls))
    monkeypatch.setattr(attn_numba, "mha_varlen_bwd", _standin_bwd(calls))
    q, k, v = batched_inputs(rng, torch.float32, 1, 5, 7, 4, 2, 8)
    q.requires_grad_()  # only q: dk, dv come back None
    out = at.flash_attn_func(q, k, v, window_size=(2, 1), softmax_scale=0.4,
                             backward_kernel="flash")
    out.sum().backward()  # an expanded (stride-0) dout
    qr = q.detach().double().requires_grad_()
    ref, _ = math_attention(qr, k.double(), v.double(), 0.4, False, (2, 1))
    ref.sum().backward()
    assert calls == [dict(kernel="flash", dout_shape=q.shape, lse_shape=(1, 4, 5))]
    assert k.grad is None and v.grad is None and err(q.grad, qr.grad) < 1e-5
    vq, vk, vv, cq, ck = varlen_inputs(rng, torch.float32, [3, 0, 4], [2, 5, 1], grad=True)
    out, lse = at.flash_attn_varlen_func(vq, vk, vv, cq, ck, 4, 5, causal=True,
                                         return_lse=True)
    assert not lse.requires_grad
    w = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad((out * w).sum(), (vq, vk, vv))
    t = [x.detach().double().requires_grad_() for x in (vq, vk, vv)]
    ro, _ = math_attention(*t, None, True, cu_q=cq, cu_k=ck)
    refs = torch.autograd.grad((ro * w.double()).sum(), t)
    assert calls[1] == dict(kernel="auto", dout_shape=vq.shape, lse_shape=(4, 7),
                            max_seqlen_q=4, max_seqlen_k=5)
    assert max(err(a, b) for a, b in zip((dq, dk, dv), refs)) < 1e-5


def test_no_backward_call_when_no_input_needs_grad(monkeypatch):
    calls = []
    monkeypatch.setattr(attn_numba, "mha_bwd", _standin_bwd(calls))
    ctx = type("Ctx", (), dict(needs_input_grad=(False,) * 9, n_inputs=9))()
    assert at._fwd_backward(ctx, torch.ones(1), None) == (None,) * 9 and calls == []


GRAD_CASES = [  # dtype, (sq, sk), (h, hkv), causal, window
    (torch.float16, (17, 17), (4, 2), True, (-1, -1)),
    (torch.float16, (1, 1), (8, 1), False, (-1, -1)),
    (torch.float32, (9, 23), (4, 1), False, (3, 0)),
    (torch.bfloat16, (23, 9), (4, 4), False, (0, 0)),
]


def _check_grads(ours, lowp, ref, dtype):
    for name, a, lo, r in zip(("dq", "dk", "dv"), ours, lowp, ref):
        assert torch.isfinite(a).all(), name
        assert err(a, r) <= fa_bound(lo, r, dtype), (name, err(a, r), err(lo, r))


@pytest.mark.parametrize("dtype,s,heads,causal,window", GRAD_CASES)
def test_gradients_against_math_path(rng, dtype, s, heads, causal, window):
    q, k, v = batched_inputs(rng, dtype, 1, *s, *heads, grad=True)
    with poisoned_outputs():
        out = at.flash_attn_func(q, k, v, causal=causal, window_size=window)
    w = torch.randn_like(out)
    ours = torch.autograd.grad((out * w).sum(), (q, k, v))
    lowp_out, _ = math_attention(q, k, v, causal=causal, window=window)
    lowp = torch.autograd.grad((lowp_out * w).sum(), (q, k, v))
    t = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref_out, _ = math_attention(*t, causal=causal, window=window)
    ref = torch.autograd.grad((ref_out * w.double()).sum(), t)
    assert all(a.dtype == dtype for a in ours)
    _check_grads(ours, lowp, ref, dtype)


def test_varlen_gradients_with_empty_sequences(rng):
    q, k, v, cq, ck = varlen_inputs(rng, torch.float16, [5, 0, 12, 3], [7, 4, 9, 0], grad=True)
    with poisoned_outputs():
        out = at.flash_attn_varlen_func(q, k, v, cq, ck, 12, 9, window_size=(4, 2))
    w = torch.randn_like(out)
    ours = torch.autograd.grad((out * w).sum(), (q, k, v))
    lo = math_attention(q, k, v, window=(4, 2), cu_q=cq, cu_k=ck)[0]
    lowp = torch.autograd.grad((lo * w).sum(), (q, k, v))
    t = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ro = math_attention(*t, window=(4, 2), cu_q=cq, cu_k=ck)[0]
    _check_grads(ours, lowp, torch.autograd.grad((ro * w.double()).sum(), t), torch.float16)
    assert torch.all(ours[0][17:] == 0)  # rows of the key-less sequence have no gradient


# --------------------------------------------------------------------------- torch.compile

class TinyAttention(torch.nn.Module):
    """A projection, flash_attn_func with GQA, and an output projection."""

    def __init__(self, d=16, heads=4, kv_heads=2, causal=True):
        super().__init__()
        self.h, self.hkv, self.d, self.causal = heads, kv_heads, d, causal
        self.qkv = torch.nn.Linear(d * heads, d * (heads + 2 * kv_heads))
        self.proj = torch.nn.Linear(d * heads, d * heads)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.d, self.hkv * self.d, self.hkv * self.d], -1)
        o = at.flash_attn_func(q.reshape(b, n, self.h, self.d), k.reshape(b, n, self.hkv, self.d),
                               v.reshape(b, n, self.hkv, self.d), causal=self.causal)
        return self.proj(o.reshape(b, n, -1))


def test_compile_fullgraph_forward(rng):
    torch._dynamo.reset()
    torch.manual_seed(int(rng.integers(2**31)))
    model, x = TinyAttention(), torch.randn(1, 17, 64)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert "attn_numba.fwd" in str(explained.graphs[0].graph)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    assert err(compiled, eager) < 1e-5

    def varlen(q, k, v, cu_q, cu_k):
        out, lse = at.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 5, causal=True,
                                             return_lse=True)
        return out * 2, lse
    explained = torch._dynamo.explain(varlen)(*varlen_inputs(rng, torch.float16, [3, 0, 4],
                                                             [2, 5, 1]))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert "attn_numba.varlen_fwd" in str(explained.graphs[0].graph)


@pytest.mark.slow
def test_compile_fullgraph_training_step(rng):
    torch._dynamo.reset()
    torch.manual_seed(int(rng.integers(2**31)))
    model, x = TinyAttention(), torch.randn(1, 17, 64)
    twin = TinyAttention()
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(twin, fullgraph=True)
    model(x).square().sum().backward()
    compiled(x).square().sum().backward()
    for (name, p), p2 in zip(model.named_parameters(), twin.parameters()):
        assert p2.grad is not None and err(p2.grad, p.grad) < 1e-4, name
