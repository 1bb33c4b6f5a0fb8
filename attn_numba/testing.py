"""Test helpers that ship with the package: random inputs, the tolerance rule, poisoned outputs.

Tolerance rule (FlashAttention's): a kernel's error against the float64 reference may be at
most twice the error of a *low-precision reference* plus a small floor. The low-precision
reference computes in float64 but rounds the probabilities P to the input dtype before P.V
and rounds the output to the input dtype, which is exactly the rounding a correct fp32-
accumulating kernel (including the tensor-core one, whose P.V runs in fp16) cannot avoid.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from . import interface
from .reference import mha_bwd_ref, mha_fwd_ref, mha_varlen_bwd_ref, mha_varlen_fwd_ref

#: absolute floor added to the tolerance, per dtype (outputs are O(1))
ATOL_FLOOR = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 2e-5}
#: lse tolerance: fp32 scores, so relative 1e-4 of |lse| plus a floor
LSE_RTOL, LSE_ATOL = 1e-4, 1e-4


@contextlib.contextmanager
def poisoned_outputs():
    """Within this block, every output the library allocates starts as NaN, so an element a
    kernel forgets to write shows up as NaN instead of hiding as a plausible value."""
    with interface._poison(True):
        yield


def random_qkv(rng, batch, seqlen_q, seqlen_k, num_heads, num_kv_heads, head_size,
               dtype=np.float16, scale=1.0, varlen=False):
    """Fresh random q, k, v (never zeros). Shapes as in ``mha_fwd`` (or varlen when
    ``varlen`` is a pair of length lists)."""
    dtype = np.dtype(dtype)
    if varlen:
        total_q, total_k = batch, seqlen_k  # callers pass totals
        shapes = [(total_q, num_heads, head_size), (total_k, num_kv_heads, head_size),
                  (total_k, num_kv_heads, head_size)]
    else:
        shapes = [(batch, seqlen_q, num_heads, head_size), (batch, seqlen_k, num_kv_heads, head_size),
                  (batch, seqlen_k, num_kv_heads, head_size)]
    return tuple((rng.standard_normal(s) * scale).astype(dtype) for s in shapes)


def random_varlen(rng, seqlens_q, seqlens_k, num_heads, num_kv_heads, head_size,
                  dtype=np.float16):
    """Random varlen inputs and their cu_seqlens (int32) for the given per-sequence lengths."""
    cu_q = np.concatenate([[0], np.cumsum(seqlens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(seqlens_k)]).astype(np.int32)
    q, k, v = random_qkv(rng, int(cu_q[-1]), None, int(cu_k[-1]), num_heads, num_kv_heads,
                         head_size, dtype, varlen=True)
    return q, k, v, cu_q, cu_k


def tolerance(out_ref, out_lowp, dtype):
    """Allowed max abs error: 2x the low-precision reference's error plus a dtype floor."""
    err_lowp = float(np.max(np.abs(out_lowp - out_ref), initial=0.0))
    return 2.0 * err_lowp + ATOL_FLOOR[np.dtype(dtype)]


@dataclass
class Comparison:
    max_err: float
    tol: float
    lse_max_err: float
    lse_tol_ok: bool

    @property
    def ok(self):
        return self.max_err <= self.tol and self.lse_tol_ok


def compare(out, lse, out_ref, lse_ref, out_lowp, dtype):
    """Compare a kernel's (out, lse) with the references; NaN anywhere fails."""
    out = np.asarray(out, np.float64)
    if not np.all(np.isfinite(out)):
        return Comparison(float("nan"), 0.0, float("nan"), False)
    tol = tolerance(out_ref, out_lowp, dtype)
    err = float(np.max(np.abs(out - out_ref), initial=0.0))
    lse = np.asarray(lse, np.float64)
    same_inf = np.array_equal(np.isneginf(lse), np.isneginf(lse_ref)) and not np.any(np.isnan(lse))
    fin = np.isfinite(lse_ref)
    lse_err = float(np.max(np.abs(lse[fin] - lse_ref[fin]), initial=0.0))
    lse_ok = same_inf and bool(np.all(
        np.abs(lse[fin] - lse_ref[fin]) <= LSE_ATOL + LSE_RTOL * np.abs(lse_ref[fin])))
    return Comparison(err, tol, lse_err, lse_ok)


def _lowp(out64, dtype):
    return out64.astype(dtype).astype(np.float64)


def check_mha_fwd(q, k, v, kernel, **kw):
    """Run ``mha_fwd`` with poisoned outputs and compare with the reference. Returns a
    :class:`Comparison`; raises AssertionError with details if it fails."""
    with poisoned_outputs():
        out, lse = interface.mha_fwd(q, k, v, kernel=kernel, return_lse=True, **kw)
    out, lse = _host(out), _host(lse)
    rkw = {key: kw[key] for key in ("softmax_scale", "causal", "window_size") if key in kw}
    ref, ref_lse = mha_fwd_ref(q, k, v, **rkw)
    lowp, _ = mha_fwd_ref(q, k, v, p_dtype=q.dtype, **rkw)
    c = compare(out, lse, ref, ref_lse, _lowp(lowp, q.dtype), q.dtype)
    assert out.shape == q.shape and out.dtype == q.dtype, (out.shape, out.dtype)
    assert c.ok, f"kernel={kernel} {kw}: {c}"
    return c


def check_mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel, **kw):
    """Varlen twin of :func:`check_mha_fwd`."""
    with poisoned_outputs():
        out, lse = interface.mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel=kernel, return_lse=True, **kw)
    out, lse = _host(out), _host(lse)
    rkw = {key: kw[key] for key in ("softmax_scale", "causal", "window_size") if key in kw}
    ref, ref_lse = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, **rkw)
    lowp, _ = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, p_dtype=q.dtype, **rkw)
    c = compare(out, lse, ref, ref_lse, _lowp(lowp, q.dtype), q.dtype)
    assert out.shape == q.shape and out.dtype == q.dtype, (out.shape, out.dtype)
    assert c.ok, f"kernel={kernel} {kw}: {c}"
    return c


#: gradient tolerance floor per dtype, relative to the largest reference gradient of each of
#: dq, dk, dv (gradients grow with the sequence length: dv sums dO over the rows that see a key)
GRAD_FLOOR = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 2e-5}
GRAD_NAMES = ("dq", "dk", "dv")


def grad_tolerance(ref, lowp, dtype):
    """Allowed max abs error of one gradient: 2x the low-precision reference's error plus a
    floor relative to the gradient's size."""
    err_lowp = float(np.max(np.abs(lowp - ref), initial=0.0))
    return 2.0 * err_lowp + GRAD_FLOOR[np.dtype(dtype)] * max(1.0, float(np.max(np.abs(ref), initial=0.0)))


@dataclass
class GradComparison:
    errs: dict   # name -> max abs error (nan when the gradient holds a NaN)
    tols: dict   # name -> allowed max abs error

    @property
    def ok(self):
        return all(self.errs[n] <= self.tols[n] for n in self.errs)   # (nan fails)


def bwd_references(dout, q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, **kw):
    """``(refs, lowps)``: the float64 gradients and the low-precision reference's (P, dS and O
    rounded to q's dtype, the gradients rounded too); batched when no cu_seqlens are given."""
    if cu_seqlens_q is None:
        ref_fn = mha_bwd_ref
        cus = ()
    else:
        ref_fn = mha_varlen_bwd_ref
        cus = (cu_seqlens_q, cu_seqlens_k)
    refs = ref_fn(dout, q, k, v, *cus, **kw)
    lowps = tuple(_lowp(g, q.dtype) for g in ref_fn(dout, q, k, v, *cus, p_dtype=q.dtype, **kw))
    return refs, lowps


def compare_grads(grads, refs, lowps, dtype):
    """Compare a kernel's (dq, dk, dv) with the references; NaN anywhere fails."""
    errs, tols = {}, {}
    for name, g, r, lo in zip(GRAD_NAMES, grads, refs, lowps):
        g = np.asarray(g, np.float64)
        assert g.shape == r.shape, (name, g.shape, r.shape)
        errs[name] = (float(np.max(np.abs(g - r), initial=0.0)) if np.all(np.isfinite(g))
                      else float("nan"))
        tols[name] = grad_tolerance(r, lo, dtype)
    return GradComparison(errs, tols)


def check_mha_bwd(dout, q, k, v, kernel, fwd_kernel="auto", **kw):
    """``mha_fwd`` (``fwd_kernel``) for out and lse, then ``mha_bwd`` (``kernel``) with
    poisoned outputs, compared with the reference backward. Returns the
    :class:`GradComparison`; raises AssertionError with details if it fails."""
    from .backward import mha_bwd
    kw, bkw = _split_bwd_kw(kw)
    out, lse = interface.mha_fwd(q, k, v, kernel=fwd_kernel, return_lse=True, **kw)
    with poisoned_outputs():
        grads = mha_bwd(dout, q, k, v, out, lse, kernel=kernel, **kw, **bkw)
    return _check_grads(grads, (q, k, v), bwd_references(dout, q, k, v, **_ref_kw(kw)),
                        kernel, kw)


def check_mha_varlen_bwd(dout, q, k, v, cu_q, cu_k, kernel, fwd_kernel="auto", **kw):
    """Varlen twin of :func:`check_mha_bwd`."""
    from .backward import mha_varlen_bwd
    kw, bkw = _split_bwd_kw(kw)
    out, lse = interface.mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel=fwd_kernel,
                                        return_lse=True, **kw)
    with poisoned_outputs():
        grads = mha_varlen_bwd(dout, q, k, v, out, lse, cu_q, cu_k, kernel=kernel, **kw,
                               **bkw)
    return _check_grads(grads, (q, k, v), bwd_references(dout, q, k, v, cu_q, cu_k,
                                                         **_ref_kw(kw)), kernel, kw)


def _split_bwd_kw(kw):
    """(forward keywords, backward-only keywords): ``deterministic`` is the backward's."""
    kw = dict(kw)
    return kw, ({"deterministic": kw.pop("deterministic")} if "deterministic" in kw else {})


def _ref_kw(kw):
    return {key: kw[key] for key in ("softmax_scale", "causal", "window_size") if key in kw}


def _check_grads(grads, inputs, references, kernel, kw):
    grads = tuple(_host(g) for g in grads)
    for g, x in zip(grads, inputs):
        assert g.shape == x.shape and g.dtype == x.dtype, (g.shape, g.dtype)
    c = compare_grads(grads, *references, inputs[0].dtype)
    assert c.ok, f"kernel={kernel} {kw}: {c}"
    return c


def _host(x):
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    if hasattr(x, "cpu"):  # torch
        return x.cpu().numpy()
    if hasattr(x, "get"):  # cupy
        return x.get()
    return np.asarray(x)
