"""The element mask: :func:`band_mask_bits` (keep-masks) against :func:`band_mask` and against
the key ranges themselves, for both tensor-core layouts, on Numba's simulator (the masks are
device functions)."""
import numpy as np
import pytest
from numba import cuda

from attn_numba.kernels import mask
from attn_numba.kernels import ptx_sm90 as px

from conftest import SIM

pytestmark = pytest.mark.skipif(not SIM, reason="device functions run on the simulator")
NEG = np.float32(-np.inf)


def _kernel(fn, n_regs):
    @cuda.jit
    def k(s, n0, lo, hi):
        lane = cuda.threadIdx.x
        r = cuda.local.array(64, np.float32)
        for i in range(n_regs):
            r[i] = s[lane, i]
        fn(r, n0[0], lane, lo[lane, 0], hi[lane, 0], lo[lane, 1], hi[lane, 1])
        for i in range(n_regs):
            s[lane, i] = r[i]
    return k


@pytest.mark.parametrize("layout,n_regs", [("wgmma", 32), ("wgmma", 64), ("mma", 16)])
def test_keep_mask_equals_the_mask_and_the_key_ranges(rng, layout, n_regs):
    frag = mask.wgmma_acc_rc if layout == "wgmma" else mask.mma_c_rc
    host = mask._host_rc(frag)
    for trial in range(3):
        n0 = np.array([int(rng.integers(0, 5000)) // 8 * 8], np.int64)
        # ranges that start before, inside and after the tile, empty rows (lo > hi) too
        lo = (n0[0] + rng.integers(-40, 140, (32, 2))).astype(np.int64)
        hi = (lo + rng.integers(-3, 150, (32, 2))).astype(np.int64)
        s0 = rng.standard_normal((32, n_regs)).astype(np.float32)
        got = {}
        for name, fn in (("abs", mask.band_mask(frag, n_regs)),
                         ("bits", mask.band_mask_bits(frag, n_regs, px.shl_clamp))):
            s = s0.copy()
            _kernel(fn, n_regs)[1, 32](s, n0, lo, hi)
            got[name] = s
        want = s0.copy()
        for lane in range(32):
            for i in range(n_regs):
                row, col = host(lane, i)
                b = int(row >= 8)
                if not lo[lane, b] <= n0[0] + col <= hi[lane, b]:
                    want[lane, i] = NEG
        np.testing.assert_array_equal(got["abs"], want)
        np.testing.assert_array_equal(got["bits"], want)


def test_shl_clamp_model_gives_zero_at_32():
    assert px.shl_clamp(np.uint32(0xFFFFFFFF), 32) == 0
    assert px.shl_clamp(np.uint32(0xFFFFFFFF), 31) == 0x80000000
    assert px.shl_clamp(np.uint32(1), 0) == 1


def test_a_layout_that_is_not_separable_is_refused():
    def scrambled(lane, i):
        return (lane >> 2) + 8 * ((i >> 1) & 1), (lane * i) % 64
    with pytest.raises(ValueError, match="lane part plus a register part"):
        mask.check_separable(scrambled, 32)
