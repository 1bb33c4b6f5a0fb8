"""Every bad input is refused with ValueError/TypeError naming the argument, before any launch."""
import numpy as np
import pytest

import attn_numba
from attn_numba import interface, mha_fwd, mha_varlen_fwd
from attn_numba.testing import random_qkv, random_varlen



def call(q, k, v, **kw):
    return mha_fwd(q, k, v, **kw)


@pytest.mark.parametrize("mutate,exc,word", [
    (lambda q, k, v: (q, k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(3, 2)), ValueError, "num_kv_heads"),
    (lambda q, k, v: (q, k[..., :4], v[..., :4]), ValueError, "head_size"),
    (lambda q, k, v: (q, k[:1], v[:1]), ValueError, "batch"),
    (lambda q, k, v: (q, k, v[:, :3]), ValueError, "v shape"),
    (lambda q, k, v: (q, k.astype(np.float16), v), TypeError, "k dtype"),
    (lambda q, k, v: (q.astype(np.float64), k.astype(np.float64), v.astype(np.float64)), TypeError, "q dtype"),
    (lambda q, k, v: (q.astype(np.int32), k, v), TypeError, "q dtype"),
    (lambda q, k, v: (q[0], k, v), ValueError, "q must have rank 4"),
    (lambda q, k, v: (q, k, v[0]), ValueError, "v must have rank 4"),
    (lambda q, k, v: (q.tolist(), k, v), TypeError, "q must be"),
    (lambda q, k, v: (q[..., :0], k[..., :0], v[..., :0]), ValueError, "head_size"),
    (lambda q, k, v: (np.zeros((1, 2, 2, 300), np.float32), np.zeros((1, 2, 2, 300), np.float32),
                      np.zeros((1, 2, 2, 300), np.float32)), ValueError, "head_size"),
])
def test_bad_tensors(qkv, no_launch, mutate, exc, word):
    with pytest.raises(exc, match=word):
        call(*mutate(*qkv))


@pytest.mark.parametrize("kw,exc,word", [
    (dict(window_size=(-2, 0)), ValueError, "window_size left"),
    (dict(window_size=(0, -5)), ValueError, "window_size right"),
    (dict(window_size=(1, 2, 3)), TypeError, "window_size"),
    (dict(window_size=5), TypeError, "window_size"),
    (dict(window_size="ab"), TypeError, "window_size"),
    (dict(window_size=(1.5, 2)), TypeError, "window_size left"),
    (dict(causal="yes"), TypeError, "causal"),
    (dict(kernel="fastest"), ValueError, "unknown kernel"),
    (dict(kernel=3), TypeError, "kernel"),
    (dict(softmax_scale=float("nan")), ValueError, "softmax_scale"),
    (dict(softmax_scale=float("inf")), ValueError, "softmax_scale"),
    (dict(softmax_scale="1"), TypeError, "softmax_scale"),
])
def test_bad_options(qkv, no_launch, kw, exc, word):
    with pytest.raises(exc, match=word):
        call(*qkv, **kw)


def test_num_heads_not_multiple(rng, no_launch):
    q, k, v = random_qkv(rng, 1, 4, 4, 6, 4, 8, np.float32)
    with pytest.raises(ValueError, match="num_heads .* multiple of num_kv_heads"):
        mha_fwd(q, k, v)


def test_mixed_host_and_device_refused(qkv, no_launch):
    from numba import cuda
    q, k, v = qkv
    with pytest.raises(TypeError, match="mix"):
        mha_fwd(q, cuda.to_device(k), v)


@pytest.fixture
def varlen(rng):
    return random_varlen(rng, [3, 0, 4], [2, 5, 1], 4, 2, 8, np.float32)


@pytest.mark.parametrize("which,bad,exc,word", [
    ("q", lambda c: c.astype(np.int64), TypeError, "cu_seqlens_q must be int32"),
    ("k", lambda c: c.astype(np.float32), TypeError, "cu_seqlens_k must be int32"),
    ("q", lambda c: c[::-1].copy(), ValueError, "cu_seqlens_q"),
    ("q", lambda c: np.array([0, 5, 3, 7], np.int32), ValueError, "non-decreasing"),
    ("k", lambda c: c[:-1].copy(), ValueError, "sequences|cu_seqlens_k"),
    ("q", lambda c: (c + 1).astype(np.int32), ValueError, r"cu_seqlens_q\[0\]"),
    ("q", lambda c: np.array([0, 3, 3, 8], np.int32), ValueError, "total_q"),
    ("k", lambda c: np.array([0, 2, 7, 9], np.int32), ValueError, "total_k"),
    ("q", lambda c: c.reshape(1, -1), ValueError, "shape"),
    ("q", lambda c: np.array([0], np.int32), ValueError, "num_seqs"),
    ("q", lambda c: list(c), TypeError, "cu_seqlens_q"),
])
def test_bad_cu_seqlens(varlen, no_launch, which, bad, exc, word):
    q, k, v, cu_q, cu_k = varlen
    if which == "q":
        cu_q = bad(cu_q)
    else:
        cu_k = bad(cu_k)
    with pytest.raises(exc, match=word):
        mha_varlen_fwd(q, k, v, cu_q, cu_k)


def test_bad_max_seqlen(varlen, no_launch):
    q, k, v, cu_q, cu_k = varlen
    with pytest.raises(ValueError, match="max_seqlen_q"):
        mha_varlen_fwd(q, k, v, cu_q, cu_k, max_seqlen_q=2)
    with pytest.raises(TypeError, match="max_seqlen_k"):
        mha_varlen_fwd(q, k, v, cu_q, cu_k, max_seqlen_k=2.0)


def test_varlen_rank(varlen, no_launch):
    q, k, v, cu_q, cu_k = varlen
    with pytest.raises(ValueError, match="q must have rank 3"):
        mha_varlen_fwd(q[None], k, v, cu_q, cu_k)


def test_kernel_that_cannot_run_is_refused(qkv, no_launch):
    # the tensor-core kernel needs fp16 and a real GPU; whatever the build has, fp32 must be refused
    with pytest.raises(ValueError, match="flash_tc"):
        call(*qkv, kernel="flash_tc")


def test_inputs_are_never_modified(qkv):
    q, k, v = qkv
    copies = [x.copy() for x in qkv]
    call(q, k, v, causal=True, kernel="naive")
    for a, b in zip(qkv, copies):
        np.testing.assert_array_equal(a, b)


def test_public_names():
    for name in ("mha_fwd", "mha_varlen_fwd", "normalize_window", "available_kernels"):
        assert hasattr(attn_numba, name)
    assert "naive" in attn_numba.available_kernels()
    # docstrings are the spec: the window formula and GQA mapping are written out
    assert "i + seqlen_k - seqlen_q - left" in mha_fwd.__doc__
    assert "h // (num_heads // num_kv_heads)" in mha_fwd.__doc__


def test_strided_numpy_views_are_computed_right(rng):
    from attn_numba.testing import check_mha_fwd
    big_q, big_k, big_v = random_qkv(rng, 1, 10, 12, 8, 2, 16, np.float32)
    q = big_q[:, ::2, ::2]          # non-contiguous: every other row and head
    k = big_k[:, ::2]
    v = big_v[:, ::2]
    assert not q.flags.c_contiguous and not k.flags.c_contiguous
    check_mha_fwd(q, k, v, "naive", window_size=(2, 1))


def test_non_contiguous_device_arrays_are_refused(rng, no_launch):
    from numba import cuda
    q, k, v = random_qkv(rng, 1, 6, 6, 2, 1, 8, np.float32)
    dq = cuda.to_device(np.concatenate([q, q], axis=1))[:, ::2]  # every other row: strided
    assert not dq.is_c_contiguous()
    with pytest.raises(ValueError, match="q must be C-contiguous"):
        mha_fwd(dq, cuda.to_device(k), cuda.to_device(v))


def test_tensor_core_kernel_refused_on_simulator_or_fp32(rng, no_launch):
    q, k, v = random_qkv(rng, 1, 6, 6, 2, 1, 16, np.float16)
    if attn_numba.on_simulator() or "flash_tc" not in attn_numba.available_kernels():
        with pytest.raises(ValueError, match="flash_tc"):
            mha_fwd(q, k, v, kernel="flash_tc")
    with pytest.raises(ValueError, match="flash_tc"):
        mha_fwd(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), kernel="flash_tc")
