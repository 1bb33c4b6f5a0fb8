"""flash_wgmma's layouts checked by NumPy emulation (no GPU): the 128B swizzle, the matrix
descriptors, and the warpgroup fragments, through the ISA-level model in
attn_numba.kernels.wgmma_emulation. Each product is compared with a plain NumPy matmul."""
import math

import ml_dtypes
import numpy as np
import pytest

from attn_numba.kernels import wgmma_emulation as em
from attn_numba.kernels import wgmma_layout as wl

DTYPES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


def _desc(addr, lbo, sbo):
    return wl.desc_encode(addr, lbo, sbo, wl.SWIZZLE_MODE["128B"])


def test_swizzle_is_a_permutation_of_16_byte_chunks():
    for rows, cols in ((64, 64), (64, 128), (128, 256), (8, 64)):
        offs = np.array([[wl.smem_offset(r, c, rows) for c in range(cols)] for r in range(rows)])
        assert sorted(offs.ravel()) == list(range(0, 2 * rows * cols, 2))
        # 8 consecutive elements stay one 16-byte chunk
        assert np.all(offs[:, 1::8] - offs[:, 0::8] == 2)
        # the kernel's layout is the hardware's: swizzle128 of the plain row-major address
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        plain = (c // 64) * rows * 128 + r * 128 + (c % 64) * 2
        assert np.array_equal(offs, em.swizzle128(plain))


def test_swizzle_spreads_a_chunk_column_over_all_banks():
    # the 8 rows of an atom keep logical chunk c in 8 different 16-byte bank groups
    for c in range(8):
        groups = {(wl.chunk_offset(r, c, 64) % 128) // 16 for r in range(8)}
        assert groups == set(range(8))


def test_descriptor_fields_roundtrip():
    d = wl.desc_encode(0x1C400, 16 * 128, 1024, 1)
    assert wl.desc_decode(d) == (0x1C400, 16 * 128, 1024, 1)
    assert d >> 62 == 1 and (d >> 32) & 0x3FFF == 64 and d & 0x3FFF == 0x1C400 >> 4
    assert d < 2 ** 64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head,bn", [(64, 128), (128, 64), (256, 64)])
def test_qk_ss_emulation_matches_matmul(dtype, head, bn):
    rng = np.random.default_rng(head + bn)
    q = rng.standard_normal((64, head)).astype(dtype)
    k = rng.standard_normal((bn, head)).astype(dtype)
    smem = np.zeros(4096 + 2 * (64 + bn) * head, np.uint8)
    sq, sk = 1024, 1024 + 2 * 64 * head          # 1024-aligned tile bases, as in the kernel
    em.store_tile(smem, sq, q)
    em.store_tile(smem, sk, k)
    acc = np.zeros((128, bn // 2))
    for kk in range(head // 16):
        acc = em.wgmma_ss(acc, smem, _desc(sq + wl.kmajor_step_offset(kk, 64), 16, 1024),
                          _desc(sk + wl.kmajor_step_offset(kk, bn), 16, 1024), dtype,
                          scale_d=kk > 0)
    want = q.astype(np.float64) @ k.astype(np.float64).T
    assert np.allclose(em.gather(acc), want, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head,bn", [(64, 128), (128, 64), (256, 64)])
def test_pv_rs_emulation_matches_matmul(dtype, head, bn):
    """P from the S accumulators (packed by p_regs), V MN-major by descriptor."""
    rng = np.random.default_rng(head * bn)
    s = rng.random((64, bn))
    v = rng.standard_normal((bn, head)).astype(dtype)
    s_frag = em.fragments(s)                     # what S = Q K^T leaves in the registers
    smem = np.zeros(2048 + 2 * bn * head, np.uint8)
    em.store_tile(smem, 1024, v)                 # V stored exactly like K
    acc = np.zeros((128, head // 2))
    for kk in range(bn // 16):
        regs = np.zeros((128, 4), np.uint32)
        for j in range(4):
            i = wl.p_regs(kk, j)
            regs[:, j] = em.pack_pairs(s_frag[:, i], s_frag[:, i + 1], dtype)
        acc = em.wgmma_rs(acc, regs, smem, _desc(1024 + wl.mnmajor_step_offset(kk),
                                                 bn * 128, 1024), dtype)
    want = s.astype(dtype).astype(np.float64) @ v.astype(np.float64)
    assert np.allclose(em.gather(acc), want, rtol=1e-12, atol=1e-9)


def test_swapped_v_descriptor_reads_the_wrong_matrix():
    """The emulation can fail: LBO and SBO swapped (with two column blocks) is caught."""
    rng = np.random.default_rng(3)
    bn, head = 64, 128
    v = rng.standard_normal((bn, head)).astype(np.float16)
    smem = np.zeros(2048 + 2 * bn * head, np.uint8)
    em.store_tile(smem, 1024, v)
    good = em.operand(smem, _desc(1024, bn * 128, 1024), head, "MN")
    bad = em.operand(smem, _desc(1024, 1024, bn * 128), head, "MN")
    want = v[:16].T.view(np.uint16)
    assert np.array_equal(good, want) and not np.array_equal(bad, want)


def test_p_regs_agrees_with_a_and_acc_layouts():
    """Every P register element sits where the A layout wants the S element it packs."""
    for warp in range(4):
        for lane in range(32):
            for kk in range(8):
                for j in range(4):
                    i = wl.p_regs(kk, j)
                    ar, ac = wl.a_rc(warp, lane, j)
                    assert wl.acc_rc(warp, lane, i) == (ar, 16 * kk + ac)
                    assert wl.acc_rc(warp, lane, i + 1) == (ar, 16 * kk + ac + 1)


def test_flash_tile_emulation_online_softmax():
    """Two key tiles through the kernel's steps (SS, softmax on fragments, RS) = softmax(QK^T)V."""
    rng = np.random.default_rng(7)
    head, bn, dtype = 64, 64, np.dtype(np.float16)
    q = rng.standard_normal((64, head)).astype(dtype)
    keys = rng.standard_normal((2 * bn, head)).astype(dtype)
    vals = rng.standard_normal((2 * bn, head)).astype(dtype)
    scale = 1.0 / math.sqrt(head)
    smem = np.zeros(1024 + 3 * 2 * 64 * head + 2048, np.uint8)
    sq, sk, sv = 1024, 1024 + 8192, 1024 + 16384
    em.store_tile(smem, sq, q)
    o = np.zeros((128, head // 2))
    m = np.full(64, -np.inf)
    den = np.zeros(64)
    rows = em.acc_index(bn)[0]
    for t in range(2):
        em.store_tile(smem, sk, keys[t * bn:(t + 1) * bn])
        em.store_tile(smem, sv, vals[t * bn:(t + 1) * bn])
        s = np.zeros((128, bn // 2))
        for kk in range(head // 16):
            s = em.wgmma_ss(s, smem, _desc(sq + wl.kmajor_step_offset(kk, 64), 16, 1024),
                            _desc(sk + wl.kmajor_step_offset(kk, bn), 16, 1024), dtype,
                            scale_d=kk > 0)
        s *= scale
        tile_max = np.full(64, -np.inf)
        np.maximum.at(tile_max, rows, s)
        new = np.maximum(m, tile_max)
        alpha = np.exp(m - new)
        p = np.exp(s - new[rows])
        tile_sum = np.zeros(64)
        np.add.at(tile_sum, rows, p)
        den = den * alpha + tile_sum
        o *= alpha[em.acc_index(head)[0]]
        m = new
        for kk in range(bn // 16):
            regs = np.stack([em.pack_pairs(p[:, wl.p_regs(kk, j)], p[:, wl.p_regs(kk, j) + 1],
                                           dtype) for j in range(4)], axis=1)
            o = em.wgmma_rs(o, regs, smem, _desc(sv + wl.mnmajor_step_offset(kk),
                                                 bn * 128, 1024), dtype)
    out = em.gather(o) / den[:, None]
    sc = q.astype(np.float64) @ keys.astype(np.float64).T * scale
    w = np.exp(sc - sc.max(1, keepdims=True))
    want = (w / w.sum(1, keepdims=True)) @ vals.astype(np.float64)
    assert np.max(np.abs(out - want)) < 5e-3


def _problem(on_simulator=False, dtype=np.float16, head_size=128):
    from attn_numba.problem import Problem
    return Problem(batch=1, total_q=64, total_k=64, max_seqlen_q=64, max_seqlen_k=64,
                   num_heads=8, num_kv_heads=2, head_size=head_size, dtype=np.dtype(dtype),
                   softmax_scale=1 / math.sqrt(head_size), window_left=-1, window_right=-1,
                   causal=False, lse_batched=True, on_simulator=on_simulator)


def test_supports_needs_no_opt_in_and_says_why_not(monkeypatch):
    """flash_wgmma is verified on the H200: no opt-in; every refusal names its reason, and
    ATTN_NUMBA_NO_WGMMA still switches it off."""
    from numba import cuda

    from attn_numba.kernels import v5_flash_wgmma as v5
    monkeypatch.delenv("ATTN_NUMBA_WGMMA", raising=False)
    monkeypatch.delenv("ATTN_NUMBA_NO_WGMMA", raising=False)
    assert "simulator" in v5.supports(_problem(on_simulator=True))
    assert "fp16/bf16" in v5.supports(_problem(dtype=np.float32))
    assert "head_size 96" in v5.supports(_problem(head_size=96))

    class Dev:
        compute_capability = (8, 0)

    monkeypatch.setattr(cuda, "get_current_device", lambda: Dev())
    assert "sm_80" in v5.supports(_problem())
    Dev.compute_capability = (9, 0)
    assert v5.supports(_problem()) is None
    assert v5.supports(_problem(dtype=ml_dtypes.bfloat16, head_size=256)) is None
    monkeypatch.setenv("ATTN_NUMBA_NO_WGMMA", "1")
    assert "ATTN_NUMBA_NO_WGMMA" in v5.supports(_problem())
