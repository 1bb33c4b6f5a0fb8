"""The occupancy cap (kernels/occupancy.py): the shared-memory pad lets exactly ``cap`` blocks
share an SM, and the wave rule picks a cap only where the last wave would run nearly empty."""
import pytest

from attn_numba.kernels import occupancy as occ

H200 = occ.SMLimits(sms=132, smem_per_sm=233472, reserved_per_block=1024,
                    optin_per_block=232448)
A30 = occ.SMLimits(sms=56, smem_per_sm=167936, reserved_per_block=1024, optin_per_block=166912)


@pytest.mark.parametrize("lim", [H200, A30], ids=["H200", "A30"])
@pytest.mark.parametrize("cap", [1, 2, 3])
@pytest.mark.parametrize("static", [18432, 34816])
def test_pad_fits_cap_blocks_and_not_one_more(lim, cap, static):
    pad = occ.pad_for_cap(cap, static, lim)
    per_block = static + pad + lim.reserved_per_block
    fit = lim.smem_per_sm // per_block
    if pad == 0:   # shared memory alone already allows at most cap blocks
        assert fit <= cap
    else:
        assert fit == cap, (pad, per_block, fit)
        assert static + pad <= lim.optin_per_block


def test_no_cap_no_pad():
    assert occ.pad_for_cap(0, 34816, H200) == 0


def test_a_cap_shared_memory_cannot_reach_is_refused():
    tiny = occ.SMLimits(sms=1, smem_per_sm=100 * 1024, reserved_per_block=1024,
                        optin_per_block=40 * 1024)
    with pytest.raises(ValueError, match="blocks per SM"):
        occ.pad_for_cap(1, 8192, tiny)


#: an SM's relative throughput with 1, 2, 3 blocks of 4 warps resident (assumed here)
RATE = (1.0, 1.6, 1.75)


def test_sm_time():
    assert occ.sm_time(4, 3, RATE) == pytest.approx(3 / 1.75 + 1)
    assert occ.sm_time(4, 2, RATE) == pytest.approx(4 / 1.6)
    assert occ.sm_time(2, 3, RATE) == pytest.approx(2 / 1.6)


def test_wave_rule():
    # flash_tc at the log's shape on the H200 (132 SMs): 3 blocks per SM by registers
    assert occ.best_cap(512, 3, 132, RATE) == 2      # 4 per SM: 3 + 1 alone, or 2 + 2
    assert occ.best_cap(396, 3, 132, RATE) == 0      # 3 per SM: one full round
    assert occ.best_cap(256, 3, 132, RATE) == 0      # 2 per SM: a cap of 2 changes nothing
    assert occ.best_cap(1024, 3, 132, RATE) == 0     # 8 per SM: 3 + 3 + 2 beats 4 x 2
    assert occ.best_cap(512, 3, 132, (1.0, 1.0, 1.0)) == 0   # no gain: a tie keeps 3


def test_resident_blocks():
    # flash_tc at D = 128 on the H200 (ptxas, sm_90): 165 registers now, 206 before issue 19
    assert occ.resident_blocks(165, 128, 34816, H200) == 3
    assert occ.resident_blocks(206, 128, 34816, H200) == 2
    assert occ.resident_blocks(127, 128, 18432, H200) == 4
    assert occ.resident_blocks(165, 128, 34816 + occ.pad_for_cap(2, 34816, H200), H200) == 2
    assert occ.resident_blocks(32, 1024, 0, H200) == 2        # by threads


def test_flash_tc_sm_rate_picks_a_cap_only_at_1024_tokens_on_the_h200():
    from attn_numba.kernels import v4_flash_tc as v4
    caps = {s: occ.best_cap((s // 16) * 8, 3, 132, v4.SM_RATE)
            for s in (512, 1024, 2048, 4096, 8192)}
    assert caps == {512: 0, 1024: 2, 2048: 0, 4096: 0, 8192: 0}


def test_no_cap_beyond_what_the_rates_describe():
    # flash_tc at D = 64 (127 registers): 4 blocks fit, SM_RATE describes 3: leave it alone
    from attn_numba.kernels import v4_flash_tc as v4
    assert occ.cap_for(512, 4, 132, v4.SM_RATE) == 0
    assert occ.cap_for(512, 3, 132, v4.SM_RATE) == 2
    assert occ.cap_for(512, 1, 132, v4.SM_RATE) == 0
