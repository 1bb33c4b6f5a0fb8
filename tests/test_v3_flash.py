"""Kernel-specific checks of v3 (flash): tile-configuration validation, head stacking, the
online softmax across several key tiles, and the band edges. The generic correctness suite
(tests/test_kernels.py) already runs every registered kernel on the common cases."""
import numpy as np
import pytest

from attn_numba.kernels import v3_flash
from attn_numba.testing import check_mha_fwd, check_mha_varlen_fwd, random_qkv, random_varlen


@pytest.mark.parametrize("case", [
    # (sq, sk, H, Hkv, D, dtype, window, causal): several BN=8 key tiles per block
    pytest.param((33, 33, 8, 1, 16, np.float16, (-1, -1), False),  # GQA 8: 8 heads stacked
                 marks=pytest.mark.slow),
    (17, 40, 4, 1, 16, np.float32, (-1, -1), True),     # sq < sk causal
    (40, 17, 2, 2, 16, np.float16, (3, 3), False),      # sq > sk window: empty rows
    pytest.param((33, 33, 4, 4, 24, np.float16, (6, 0), False),  # head size 24 (padded to 32)
                 marks=pytest.mark.slow),
    (17, 17, 4, 2, 16, np.float32, (0, 0), True),       # diagonal only
])
def test_flash_multi_tile(rng, case):
    sq, sk, h, hkv, d, dtype, window, causal = case
    q, k, v = random_qkv(rng, 1, sq, sk, h, hkv, d, dtype)
    check_mha_fwd(q, k, v, "flash", causal=causal, window_size=window)


def test_flash_running_max_changes(rng):
    """Keys with growing scores force the running max to move at every tile."""
    q, k, v = random_qkv(rng, 1, 9, 40, 2, 1, 16, np.float32)
    k = k * np.linspace(0.1, 4.0, 40, dtype=np.float32)[None, :, None, None]
    check_mha_fwd(q, k, v, "flash", softmax_scale=1.0)


def test_flash_varlen_zero_lengths(rng):
    q, k, v, cu_q, cu_k = random_varlen(rng, [0, 11, 3, 0, 9], [5, 0, 13, 0, 9], 4, 1, 16)
    check_mha_varlen_fwd(q, k, v, cu_q, cu_k, "flash", window_size=(4, 2))


def test_stacked_heads():
    t = v3_flash.Tiles(BM=64, BN=64, NT=128, TM=8, TN=4, DK=16, BK=16)
    assert v3_flash.stacked_heads(4, t) == 4
    assert v3_flash.stacked_heads(8, t) == 8
    assert v3_flash.stacked_heads(16, t) == 8
    assert v3_flash.stacked_heads(1, t) == 1
    assert v3_flash.stacked_heads(6, t) == 2
    assert v3_flash.stacked_heads(8, v3_flash.SIM_TILES) == 8


def test_bad_tiles_are_refused():
    with pytest.raises(ValueError, match="bad tiles"):
        v3_flash.derived(128, v3_flash.Tiles(BM=64, BN=64, NT=100, TM=8, TN=4, DK=16, BK=16))


def test_default_tiles_fit_shared_memory():
    for d, tiles in v3_flash.GPU_TILES.items():
        assert v3_flash.shared_bytes(d, tiles) <= 48 * 1024
        v3_flash.derived(d, tiles)


def test_padded_head_sizes():
    assert [v3_flash.padded_head_size(d) for d in (1, 64, 65, 128, 129, 256)] == \
        [64, 64, 128, 128, 256, 256]
    assert v3_flash.padded_head_size(24, on_simulator=True) == 32
