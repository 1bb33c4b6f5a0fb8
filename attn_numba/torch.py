"""PyTorch integration: differentiable ``flash_attn_func`` / ``flash_attn_varlen_func``.

    >>> from attn_numba.torch import flash_attn_func
    >>> out = flash_attn_func(q, k, v, causal=True)      # q, k, v: torch tensors
    >>> out.sum().backward()                              # q.grad, k.grad, v.grad

Four ``torch.library`` custom ops carry the work: ``attn_numba::fwd`` / ``::bwd`` (batched) and
``attn_numba::varlen_fwd`` / ``::varlen_bwd``. Each has a fake (meta) implementation, so
``torch.compile(model, fullgraph=True)`` traces them without a graph break, and the forward
ops have an autograd formula (``register_autograd``) calling the backward op, and an autocast
rule (inputs cast to the autocast region's dtype).

Devices: CUDA tensors go straight to :func:`attn_numba.mha_fwd` / ``mha_bwd``, which launch on
torch's current stream, allocate from torch's caching allocator and never synchronise (so
a call can be captured in a ``torch.cuda.CUDAGraph`` once it has run outside the capture).
CPU tensors go through NumPy and the API's host path (which runs on Numba's CUDA simulator
when there is no GPU); where no kernel of this build takes bfloat16 (the simulator), bf16
CPU tensors are computed by the float32 kernels (bf16 widens to fp32 exactly; the results
are rounded back to bf16).

This module imports torch; ``import attn_numba`` does not import it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import interface
from .arrays import BF16
from .problem import normalize_window

__all__ = ["flash_attn_func", "flash_attn_varlen_func"]


# --------------------------------------------------------------------------- the user API

def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), *, return_lse=False, kernel="auto",
                    backward_kernel="auto"):
    """FlashAttention's ``flash_attn_func``, differentiable in q, k and v.

    Arguments:
        q: (batch, seqlen_q, num_heads, head_size) torch tensor, float16, bfloat16 or float32,
            on a CUDA device or the CPU.
        k, v: (batch, seqlen_k, num_kv_heads, head_size), same dtype and device;
            num_heads must be a multiple of num_kv_heads (GQA/MQA).
        dropout_p: must be 0.0 (no dropout); there so that FlashAttention's positional
            order ``(q, k, v, dropout_p, softmax_scale, causal, window_size)`` carries over.
        softmax_scale, causal, window_size, kernel: as in :func:`attn_numba.mha_fwd`.
        return_lse: also return the float32 (batch, num_heads, seqlen_q) log-sum-exp (natural
            log). lse is not differentiable: a gradient reaching it is ignored.
        backward_kernel: the gradient kernel, "auto", "flash", "flash_tc" or "flash_wgmma"
            (see :func:`attn_numba.mha_bwd`).

    Returns ``out`` (q's shape and dtype), or ``(out, lse)``. Under ``torch.autocast``, q, k
    and v are first cast to the region's dtype.
    """
    _no_dropout(dropout_p)
    left, right = _window(window_size, causal)
    out, lse = torch.ops.attn_numba.fwd(q, k, v, softmax_scale, causal, left, right, kernel,
                                        backward_kernel)
    return (out, lse) if return_lse else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), *, return_lse=False, kernel="auto",
                           backward_kernel="auto"):
    """FlashAttention's ``flash_attn_varlen_func``, differentiable in q, k and v.

    Arguments:
        q: (total_q, num_heads, head_size); k, v: (total_k, num_kv_heads, head_size).
        cu_seqlens_q, cu_seqlens_k: int32 (num_seqs + 1,) tensors (on q's device, or the CPU);
            zero-length sequences are allowed.
        max_seqlen_q, max_seqlen_k: ints, the longest sequence of each (required, as in
            FlashAttention: they keep a CUDA call free of host synchronisation).
        The rest as in :func:`flash_attn_func`; lse is float32 (num_heads, total_q).
    """
    _no_dropout(dropout_p)
    for name, val in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(val, bool) or not isinstance(val, (int, torch.SymInt)):
            raise TypeError(f"{name} must be an int, got {type(val).__name__}")
    left, right = _window(window_size, causal)
    out, lse = torch.ops.attn_numba.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                               max_seqlen_q, max_seqlen_k, softmax_scale,
                                               causal, left, right, kernel, backward_kernel)
    return (out, lse) if return_lse else out


def _no_dropout(dropout_p):
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a number, got {type(dropout_p).__name__}")
    if dropout_p != 0:
        raise ValueError(f"dropout_p must be 0.0: attn_numba has no dropout, got {dropout_p}")


def _window(window_size, causal):
    """The raw (left, right) as ints, after the API's checks (errors name the bad part)."""
    normalize_window(window_size, causal)
    return int(window_size[0]), int(window_size[1])


# --------------------------------------------------------------------------- torch <-> NumPy

def _to_numpy(t):
    """A CPU tensor as a NumPy array (bf16 as ``ml_dtypes.bfloat16``; no copy if contiguous)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.numpy()


def _from_numpy(a):
    a = np.ascontiguousarray(a)
    if BF16 is not None and a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _host_dtype(dtype):
    """The dtype the host path computes a CPU tensor of ``dtype`` in (see the module doc)."""
    if dtype == torch.bfloat16 and interface.on_simulator():
        return torch.float32
    return dtype


def _host(fn, tensors, dtype, keep_f32=()):
    """Run ``fn(*numpy arrays)`` on CPU tensors computed in :func:`_host_dtype`; the results
    come back as tensors of ``dtype`` (those at the indices ``keep_f32`` stay float32)."""
    hd = _host_dtype(dtype)
    arrs = [_to_numpy(t.to(hd) if t.dtype == dtype else t) for t in tensors]
    res = fn(*arrs)
    return tuple(r if i in keep_f32 else r.to(dtype) for i, r in
                 enumerate(_from_numpy(a) for a in res))


def _cu_arg(cu, device_is_cuda):
    """cu_seqlens for the API: a CUDA tensor as is with CUDA q, else a NumPy int32 array."""
    if device_is_cuda and cu.is_cuda:
        return cu.contiguous()
    return _to_numpy(cu.cpu())


# --------------------------------------------------------------------------- forward ops

@torch.library.custom_op("attn_numba::fwd", mutates_args=())
def _fwd(q: Tensor, k: Tensor, v: Tensor, softmax_scale: Optional[float], causal: bool,
         window_left: int, window_right: int, kernel: str,
         backward_kernel: str) -> tuple[Tensor, Tensor]:
    kw = dict(softmax_scale=softmax_scale, causal=causal, kernel=kernel,
              window_size=(window_left, window_right), return_lse=True)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if q.is_cuda:
        return tuple(interface.mha_fwd(q, k, v, **kw))
    return _host(lambda a, b, c: interface.mha_fwd(a, b, c, **kw), (q, k, v), q.dtype, (1,))


@_fwd.register_fake
def _fwd_fake(q, k, v, softmax_scale, causal, window_left, window_right, kernel,
              backward_kernel):
    _check_rank(q, k, v, 4)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32))


@torch.library.custom_op("attn_numba::varlen_fwd", mutates_args=())
def _varlen_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                max_seqlen_q: int, max_seqlen_k: int, softmax_scale: Optional[float],
                causal: bool, window_left: int, window_right: int, kernel: str,
                backward_kernel: str) -> tuple[Tensor, Tensor]:
    kw = dict(max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, causal=causal,
              softmax_scale=softmax_scale, window_size=(window_left, window_right),
              kernel=kernel, return_lse=True)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    cq, ck = _cu_arg(cu_seqlens_q, q.is_cuda), _cu_arg(cu_seqlens_k, q.is_cuda)
    if q.is_cuda:
        return tuple(interface.mha_varlen_fwd(q, k, v, cq, ck, **kw))
    return _host(lambda a, b, c: interface.mha_varlen_fwd(a, b, c, cq, ck, **kw), (q, k, v),
                 q.dtype, (1,))


@_varlen_fwd.register_fake
def _varlen_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                     softmax_scale, causal, window_left, window_right, kernel, backward_kernel):
    _check_rank(q, k, v, 3)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32))


def _check_rank(q, k, v, rank):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != rank:
            raise ValueError(f"{name} must have rank {rank}, got shape {tuple(t.shape)}")


# --------------------------------------------------------------------------- backward ops

def _mha_bwd(varlen):
    """``attn_numba.mha_bwd`` / ``mha_varlen_bwd``, looked up per call (tests substitute it)."""
    import attn_numba
    return attn_numba.mha_varlen_bwd if varlen else attn_numba.mha_bwd


def _bwd_inputs(dout, q, k, v, out, lse):
    """Contiguous inputs, dout in q's dtype (autograd may hand a strided or expanded one)."""
    return (dout.to(q.dtype).contiguous(), q.contiguous(), k.contiguous(), v.contiguous(),
            out.contiguous(), lse.contiguous())


@torch.library.custom_op("attn_numba::bwd", mutates_args=())
def _bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
         softmax_scale: Optional[float], causal: bool, window_left: int, window_right: int,
         kernel: str) -> tuple[Tensor, Tensor, Tensor]:
    fn = _mha_bwd(False)
    kw = dict(softmax_scale=softmax_scale, causal=causal, kernel=kernel,
              window_size=(window_left, window_right))
    ins = _bwd_inputs(dout, q, k, v, out, lse)
    if q.is_cuda:
        return tuple(fn(*ins, **kw))
    return _host(lambda *a: fn(*a, **kw), ins, q.dtype)


@_bwd.register_fake
def _bwd_fake(dout, q, k, v, out, lse, softmax_scale, causal, window_left, window_right,
              kernel):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


@torch.library.custom_op("attn_numba::varlen_bwd", mutates_args=())
def _varlen_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
                max_seqlen_k: int, softmax_scale: Optional[float], causal: bool,
                window_left: int, window_right: int,
                kernel: str) -> tuple[Tensor, Tensor, Tensor]:
    fn = _mha_bwd(True)
    kw = dict(max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, causal=causal,
              softmax_scale=softmax_scale, window_size=(window_left, window_right),
              kernel=kernel)
    ins = _bwd_inputs(dout, q, k, v, out, lse)
    cq, ck = _cu_arg(cu_seqlens_q, q.is_cuda), _cu_arg(cu_seqlens_k, q.is_cuda)
    if q.is_cuda:
        return tuple(fn(*ins, cq, ck, **kw))
    return _host(lambda *a: fn(*a, cq, ck, **kw), ins, q.dtype)


@_varlen_bwd.register_fake
def _varlen_bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                     max_seqlen_k, softmax_scale, causal, window_left, window_right, kernel):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


# --------------------------------------------------------------------------- autograd

def _setup_context(ctx, inputs, output):
    """Saves q, k, v, out, lse (and the cu_seqlens of a varlen call); the options stay on
    ``ctx``: ``(max_q, max_k,) scale, causal, left, right`` and the backward kernel."""
    out, lse = output
    varlen = len(inputs) == 13
    ctx.save_for_backward(*inputs[:5 if varlen else 3], out, lse)
    ctx.n_inputs = len(inputs)
    ctx.opts, ctx.bwd_kernel = inputs[5 if varlen else 3:-2], inputs[-1]
    ctx.mark_non_differentiable(lse)


def _grads(ctx, dout, varlen):
    """(dq, dk, dv) for the inputs that need them (None for the others), then None for
    every non-tensor input; no backward launch when none of q, k, v needs a gradient."""
    rest = (None,) * (ctx.n_inputs - 3)
    need = ctx.needs_input_grad[:3]
    if not any(need):
        return (None, None, None) + rest
    if varlen:
        q, k, v, cu_q, cu_k, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.attn_numba.varlen_bwd(dout, q, k, v, out, lse, cu_q, cu_k,
                                                     *ctx.opts, ctx.bwd_kernel)
    else:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.attn_numba.bwd(dout, q, k, v, out, lse, *ctx.opts,
                                              ctx.bwd_kernel)
    return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None) + rest


def _fwd_backward(ctx, dout, dlse):
    return _grads(ctx, dout, False)


def _varlen_fwd_backward(ctx, dout, dlse):
    return _grads(ctx, dout, True)


_fwd.register_autograd(_fwd_backward, setup_context=_setup_context)
_varlen_fwd.register_autograd(_varlen_fwd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- autocast

_LIB = torch.library.Library("attn_numba", "IMPL")


def _autocast_rule(name, device_type):
    """Autocast for ``op`` on ``device_type``: floating-point inputs cast to the autocast
    region's dtype (``torch.get_autocast_dtype``, so ``dtype=torch.bfloat16`` is honoured),
    then the op runs with autocast off. (``torch.library.register_autocast`` fixes one dtype.)"""
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
    op = getattr(torch.ops.attn_numba, name).default

    def kernel(_keyset, *args):
        dt = torch.get_autocast_dtype(device_type)
        args = tuple(a.to(dt) if isinstance(a, Tensor) and a.is_floating_point() else a
                     for a in args)
        with torch._C._ExcludeDispatchKeyGuard(keyset):
            return op(*args)

    _LIB.impl(name, kernel, key, with_keyset=True)


for _name in ("fwd", "varlen_fwd"):
    for _dev in ("cpu", "cuda"):
        _autocast_rule(_name, _dev)
