"""Error messages name what the caller wrote, and output buffers that alias an input are
refused everywhere, including on the simulator (where device arrays have no device pointer)."""
import numpy as np
import pytest

import attn_numba
from attn_numba import arrays
from attn_numba.testing import random_qkv, random_varlen

torch = pytest.importorskip("torch")


class _CudaLooking(torch.Tensor):
    """A CPU tensor that reports ``is_cuda``: reaches the torch path's dtype checks here, with
    no GPU (the checks run before anything touches the device)."""

    @property
    def is_cuda(self):
        return True


_CudaLooking.__module__ = "torch._attn_numba_test"


def _fake_cuda(x, dtype):
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype).as_subclass(_CudaLooking)


def test_torch_dtype_without_numpy_match_keeps_its_name():
    t = torch.zeros((2, 3), dtype=torch.int8)
    inf = arrays.info(t, "torch")
    assert arrays.dtype_name(inf.dtype, "torch") == "torch.int8"
    assert arrays.dtype_name(arrays.info(t.to(torch.float64), "torch").dtype,
                             "torch") == "torch.float64"
    assert arrays.dtype_name(np.dtype(np.int8)) == "int8"


@pytest.mark.parametrize("dtypes,word", [
    ((torch.int8,) * 3, r"q dtype must be float16, bfloat16 or float32, got torch\.int8$"),
    ((torch.float64,) * 3, r"got torch\.float64$"),
    ((torch.uint8,) * 3, r"got torch\.uint8$"),
    ((torch.float16, torch.int8, torch.float16),
     r"k dtype torch\.int8 does not match q dtype torch\.float16"),
])
def test_torch_dtype_named_as_written(qkv, no_launch, dtypes, word):
    q, k, v = (_fake_cuda(x, dt) for x, dt in zip(qkv, dtypes))
    with pytest.raises(TypeError, match=word):
        attn_numba.mha_fwd(q, k, v)


def test_torch_out_dtype_named_as_written(qkv, no_launch):
    q, k, v = (_fake_cuda(x, torch.float16) for x in qkv)
    out = _fake_cuda(np.zeros(q.shape, np.float32), torch.int8)
    with pytest.raises(TypeError, match=r"out must have dtype torch\.float16, got torch\.int8"):
        attn_numba.mha_fwd(q, k, v, out=out)


def test_torch_varlen_cu_seqlens_dtype_named_as_written(rng, no_launch):
    q, k, v, cu_q, cu_k = random_varlen(rng, [3, 4], [3, 4], 2, 1, 8, np.float16)
    q, k, v = (_fake_cuda(x, torch.float16) for x in (q, k, v))
    bad = _fake_cuda(cu_q, torch.int8)
    with pytest.raises(TypeError, match=r"cu_seqlens_q must be int32, got torch\.int8"):
        attn_numba.mha_varlen_fwd(q, k, v, bad, _fake_cuda(cu_k, torch.int32))


def test_numpy_dtype_named_as_written(qkv, no_launch):
    q, k, v = (x.astype(np.int8) for x in qkv)
    with pytest.raises(TypeError, match=r"got int8$"):
        attn_numba.mha_fwd(q, k, v)


# --------------------------------------------------------------------------- aliasing

def _device(rng, sq=6, h=2, d=8):
    from numba import cuda
    q, k, v = random_qkv(rng, 1, sq, sq, h, h, d, np.float32)  # out's shape fits q, k and v
    return (q, k, v), tuple(cuda.to_device(x) for x in (q, k, v))


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_out_that_is_an_input_is_refused(rng, no_launch, which):
    _, (q, k, v) = _device(rng)
    buf = dict(q=q, k=k, v=v)[which]
    with pytest.raises(ValueError, match=f"out overlaps {which}"):
        attn_numba.mha_fwd(q, k, v, out=buf)


def test_out_partly_over_q_is_refused_and_a_neighbour_is_not(rng):
    from numba import cuda
    (q, k, v), _ = _device(rng)
    big = cuda.to_device(np.concatenate([q, q, q]))   # rows: q | q | free
    qd, kd, vd = big[0:1], cuda.to_device(k), cuda.to_device(v)
    partial = big.reshape(3 * q.size)[q.size // 2: q.size // 2 + q.size].reshape(q.shape)
    with pytest.raises(ValueError, match="out overlaps q"):
        attn_numba.mha_fwd(qd, kd, vd, out=partial)
    neighbour = big[1:2]                              # starts where q ends
    res = attn_numba.mha_fwd(qd, kd, vd, out=neighbour, kernel="naive")
    np.testing.assert_allclose(res.copy_to_host(), attn_numba.mha_fwd(q, k, v, kernel="naive"),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(big[0:1].copy_to_host(), q)   # q untouched


def test_lse_out_over_an_input_or_out_is_refused(rng, no_launch):
    from numba import cuda
    _, (q, k, v) = _device(rng)
    b, sq, h, _ = q.shape
    over_q = q.reshape(q.size)[: b * h * sq].reshape(b, h, sq)
    with pytest.raises(ValueError, match="lse_out overlaps q"):
        attn_numba.mha_fwd(q, k, v, lse_out=over_q, return_lse=True)
    out = cuda.device_array(q.shape, np.float32)
    over_out = out.reshape(out.size)[: b * h * sq].reshape(b, h, sq)
    with pytest.raises(ValueError, match="lse_out overlaps out"):
        attn_numba.mha_fwd(q, k, v, out=out, lse_out=over_out, return_lse=True)


def test_aliasing_refused_after_a_valid_call_with_the_same_facts(rng):
    """The second call of a shape takes the validated fast path; it must still refuse."""
    from numba import cuda
    _, (q, k, v) = _device(rng)
    attn_numba.mha_fwd(q, k, v, kernel="naive", out=cuda.device_array(q.shape, np.float32))
    with pytest.raises(ValueError, match="out overlaps q"):
        attn_numba.mha_fwd(q, k, v, kernel="naive", out=q)


def test_varlen_out_that_is_q_is_refused(rng, no_launch):
    from numba import cuda
    q, k, v, cu_q, cu_k = random_varlen(rng, [3, 0, 4], [3, 0, 4], 2, 2, 8, np.float32)
    qd, kd, vd = (cuda.to_device(x) for x in (q, k, v))
    with pytest.raises(ValueError, match="out overlaps v"):
        attn_numba.mha_varlen_fwd(qd, kd, vd, cu_q, cu_k, out=vd)


@pytest.mark.gpu
def test_torch_cuda_int8_named_as_written(rng):
    q, k, v = (torch.from_numpy(x).to("cuda", torch.int8)
               for x in random_qkv(rng, 1, 4, 4, 2, 1, 8, np.float32))
    with pytest.raises(TypeError, match=r"got torch\.int8$"):
        attn_numba.mha_fwd(q, k, v)
    out = torch.empty((1, 4, 2, 8), device="cuda", dtype=torch.int8)
    q, k, v = (x.to(torch.float16) for x in (q, k, v))
    with pytest.raises(TypeError, match=r"out must have dtype torch\.float16, got torch\.int8"):
        attn_numba.mha_fwd(q, k, v, out=out)
    with pytest.raises(ValueError, match="out overlaps q"):
        attn_numba.mha_fwd(q, k, v, out=q)
