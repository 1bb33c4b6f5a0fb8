"""The atomic-dQ variant of the tensor-core backward (``bwd_flash_tc.plan(problem,
deterministic=False)``): the dS^T ``ldmatrix.trans`` map and the dQ product's fragment ->
(row, column) map emulated in NumPy against a matmul (every output element added exactly
once per tile, each lane's adds at distinct addresses), the plan and scratch contract, and
the real kernels on the simulator (``bwd_tc_sim``) against float64 gradients.
"""
import numpy as np
import pytest

from attn_numba.kernels import bwd_flash_tc as tc
from attn_numba.kernels import bwd_tc_layout as BL
from attn_numba.kernels import v4_layout as L
from test_bwd_tc_fragments import _problem, _sim_case


def test_ds_ldsm_rc_gives_ds_a_fragments(rng):
    """ldmatrix.x4.trans at ds_ldsm_rc's addresses of a stored dS^T (keys x queries) loads
    the A registers of dS (queries x keys) for every k-step and m-tile."""
    bnk, bm = 64, 32
    dst = rng.integers(0, 2 ** 16, (bnk, bm), dtype=np.uint16)     # stored: rows are keys
    for kk in range(bnk // 16):
        for mt in range(bm // 16):
            regs = L.ldmatrix_py(dst, lambda ln: BL.ds_ldsm_rc(ln, kk, mt), 4, trans=True)
            a = dst.T[16 * mt:16 * mt + 16, 16 * kk:16 * kk + 16]   # dS block (q x keys)
            for lane in range(32):
                for reg in range(4):
                    r, c = L.a_frag_rc(lane, reg)
                    want = int(a[r, c]) | int(a[r, c + 1]) << 16
                    assert regs[lane, reg] == want, (kk, mt, lane, reg)


def test_ds_rows_conflict_free():
    """The 8 row addresses of each ldmatrix matrix, and a warp's 32 packed stores of one
    n-tile, fall in distinct 4-word bank groups (row stride ds_row_bytes)."""
    dsr = BL.ds_row_bytes(32)
    for i in range(4):
        addrs = [dsr * BL.ds_ldsm_rc(8 * i + r, 1, 1)[0] + 2 * BL.ds_ldsm_rc(8 * i + r, 1, 1)[1]
                 for r in range(8)]
        assert all(a % 16 == 0 for a in addrs)
        assert len({(a // 16) % 8 for a in addrs}) == 8
    for nt in range(4):
        words = [((lane >> 2) * dsr + 16 * nt + 4 * (lane & 3)) // 4 % 32 for lane in range(32)]
        assert len(set(words)) == 32


def _dq_tile_emulated(ds, kt, D, dtype, nwarps=BL.WARPS):
    """The dQ product of one (key block, query tile) as the kernel's warps compute it: for
    each warp's (m-tile, column pair) units, mma over k-steps of 16 keys from the registers
    ldmatrix gives, then the C fragment's (row, col) per lane and register. Returns
    {(warp, lane): [(row, col, value)]} of the red.global.add calls."""
    bnk, bm = ds.shape[1], ds.shape[0]
    d16 = BL.padded(D)
    ktp = np.zeros((bnk, d16), dtype)
    ktp[:, :D] = kt
    ktp = ktp.view(np.uint16)
    dst = np.ascontiguousarray(ds.T.astype(dtype)).view(np.uint16)
    mt_n, pairs = bm // 16, d16 // 16
    units, adds = mt_n * pairs, {}
    for warp in range(nwarps):
        for u in range(warp, units, nwarps):
            mq, p = u % mt_n, u // mt_n
            acc = np.zeros((32, 8), np.float32)
            for kk in range(bnk // 16):
                a = L.ldmatrix_py(dst, lambda ln: BL.ds_ldsm_rc(ln, kk, mq), 4, trans=True)
                b = L.ldmatrix_py(ktp, lambda ln: L.v_ldsm_rc(ln, kk, p), 4, trans=True)
                acc[:, :4] = L.mma_py(a, b[:, :2], acc[:, :4], np.dtype(dtype))
                acc[:, 4:] = L.mma_py(a, b[:, 2:], acc[:, 4:], np.dtype(dtype))
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for jj in range(2):
                    col = 16 * p + 8 * jj + 2 * t
                    if col >= D:
                        continue
                    for half in range(2):
                        row = 16 * mq + g + 8 * half
                        for e in range(2):
                            adds.setdefault((warp, lane), []).append(
                                (row, col + e, acc[lane, 4 * jj + 2 * half + e]))
    return adds


@pytest.mark.parametrize("bnk,bm,D", [(64, 32, 64), (32, 32, 40), (64, 16, 24)])
def test_dq_atomic_map_matches_matmul(rng, bnk, bm, D):
    """Every (query, column) of the tile is added exactly once, by one lane, whose adds are
    at distinct addresses; the values are dS K."""
    ds = rng.standard_normal((bm, bnk)).astype(np.float16)
    kt = rng.standard_normal((bnk, D)).astype(np.float16)
    adds = _dq_tile_emulated(ds, kt, D, np.float16)
    got = np.full((bm, D), np.nan)
    seen = set()
    for key, lst in adds.items():
        cells = [(r, c) for r, c, _ in lst]
        assert len(cells) == len(set(cells)), key          # a lane's addresses are distinct
        for r, c, x in lst:
            assert (r, c) not in seen, (key, r, c)          # one thread per element
            seen.add((r, c))
            got[r, c] = x
    assert len(seen) == bm * D
    want = ds.astype(np.float64) @ kt.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("total_q", [0, 37])
def test_atomic_plan_contract(total_q):
    from attn_numba.kernels import BWD_ARRAYS
    p = _problem(batch=1, total_q=total_q, total_k=40, max_seqlen_q=max(total_q, 1),
                 max_seqlen_k=40, num_heads=4, num_kv_heads=2, head_size=64,
                 dtype=np.dtype(np.float16), softmax_scale=0.125, window_left=-1,
                 window_right=-1, causal=False, lse_batched=True, on_simulator=True)
    assert [s.name for s in tc.scratch(p)] == ["delta"]
    sc = tc.scratch(p, deterministic=False)
    assert [s.name for s in sc] == ["delta", "dq_accum"]
    assert sc[1].shape == (max(total_q, 1), 4, 64) and sc[1].dtype == np.float32
    plans = tc.plan(p, deterministic=False)
    names = set(BWD_ARRAYS) | {s.name for s in sc}
    for pl in plans:
        assert set(pl.arrays) <= names and len(pl.views) <= len(pl.arrays)
    assert all("dq" not in pl.arrays or "dq_accum" in pl.arrays for pl in plans)
    if total_q:
        assert [pl.arrays for pl in plans] == [tc.DELTA_ZERO_ARRAYS, tc.DKDV_ATOMIC_ARRAYS,
                                               tc.CONVERT_ARRAYS]
        assert plans[2].griddim[0] * plans[2].blockdim >= total_q * 4 * 32
    else:
        assert [pl.arrays for pl in plans] == [tc.DKDV_ATOMIC_ARRAYS]
    assert plans[-1 if not total_q else 1].shared == BL.dkdv_atomic_shared(64)
    assert [pl.arrays for pl in tc.plan(p)][-1] == tc.DQ_ARRAYS      # the default unchanged


@pytest.mark.slow
def test_atomic_kernels_on_simulator_quick(monkeypatch, rng):
    """The real atomic variant (delta + zero, dK/dV + red.add of dS K, convert) from NaN
    scratch and outputs, against float64: causal, sq != sk, GQA 2."""
    _sim_case(monkeypatch, rng, [20], [37], 2, 1, 16, (-1, -1), True, True,
              deterministic=False)


ATOMIC_CASES = [  # seqlens_q, seqlens_k, H, Hkv, D, window, causal, lse_batched
    ([21, 0, 70], [50, 9, 33], 2, 2, 16, (-1, -1), True, False),     # varlen, an empty one
    ([75], [30], 4, 1, 24, (0, 0), False, True),                     # rows with no key
    ([33], [45], 8, 1, 16, (5, 0), False, True),                     # GQA 8, window (W, 0)
]


@pytest.mark.slow
@pytest.mark.parametrize("case", ATOMIC_CASES, ids=lambda c: "-".join(map(str, c[:5])))
def test_atomic_kernels_on_simulator(monkeypatch, rng, case):
    _sim_case(monkeypatch, rng, *case, deterministic=False)


@pytest.mark.slow
def test_atomic_kernels_on_simulator_head_split_bf16(monkeypatch, rng):
    """Head size 136 (two warps per 16 keys, 32-key blocks), bfloat16, 16-query tiles."""
    import ml_dtypes
    _sim_case(monkeypatch, rng, [20], [33], 2, 1, 136, (-1, -1), False, True,
              ml_dtypes.bfloat16, deterministic=False)
    _sim_case(monkeypatch, rng, [50, 29], [45, 70], 2, 1, 16, (20, 3), False, False,
              dkdv=(64, 16, 1), deterministic=False)


# --------------------------------------------------------------------------- GPU (the H200)

@pytest.mark.gpu
@pytest.mark.parametrize("idx", range(11))
def test_atomic_variant_on_gpu(idx):
    """Every case of scripts/gpu_bwd_check.py's sweep with ``deterministic=False``:
    FlashAttention's rule per gradient, from NaN outputs; dk and dv bit-identical over two
    runs (only dq's sum order varies)."""
    import os
    import sys
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), "scripts"))
    import gpu_bwd_check as g
    res = g.check_case(300 + idx, *g.sweep_cases()[idx], deterministic=False)
    for name in ("dq", "dk", "dv"):
        assert res[name]["finite"], (name, res)
        assert res[name]["err"] <= 2 * res[name]["torch_err"] + 1e-4, (name, res)
    assert res["deterministic"], res
