"""CPU tests of the tensor-core backward (bwd_flash_tc): its one new fragment map
(``a_ldsm_rc``), and a lane-by-lane NumPy emulation of its dK/dV and dQ passes built from the
kernels' own index maps (``bwd_tc_emulation``), against float64 gradients.

mma and ldmatrix are emulated by ``v4_layout.mma_py`` / ``ldmatrix_py``, which follow the PTX
ISA's fragment tables independently of the maps, so a wrong map gives wrong gradients.
"""
import numpy as np
import pytest

from attn_numba.kernels import bwd_flash_tc as tc
from attn_numba.kernels import bwd_tc_layout as BL
from attn_numba.kernels import v4_layout as L
from attn_numba.kernels.bwd_tc_emulation import emulate_dkdv, emulate_dq
from attn_numba.problem import Problem, key_range_host, normalize_window


def grads_f64(dout, q, k, v, scale, left, right):
    """float64 (dq, dk, dv, out, lse) of one sequence: q/dout (sq, H, D), k/v (sk, Hkv, D);
    rows that see no key have out 0, lse -inf and no gradient."""
    q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
    sq, nh, D = q.shape
    sk, hkv = k.shape[0], k.shape[1]
    g = nh // hkv
    mask = np.zeros((sq, sk), bool)
    for i in range(sq):
        lo, hi = key_range_host(i, sq, sk, left, right)
        if lo <= hi:
            mask[i, lo:hi + 1] = True
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    out = np.zeros_like(q)
    lse = np.full((nh, sq), -np.inf)
    for h in range(nh):
        kk, vv = k[:, h // g], v[:, h // g]
        s = np.where(mask, q[:, h] @ kk.T * scale, -np.inf)
        m = np.where(mask.any(1), s.max(1), 0.0)
        e = np.where(mask, np.exp(s - m[:, None]), 0.0)
        tot = e.sum(1)
        p = np.where(tot[:, None] > 0, e / np.where(tot > 0, tot, 1)[:, None], 0.0)
        lse[h] = np.where(tot > 0, m + np.log(np.where(tot > 0, tot, 1)), -np.inf)
        out[:, h] = p @ vv
        dp = dout[:, h] @ vv.T
        ds = p * (dp - (dout[:, h] * out[:, h]).sum(1)[:, None])
        dq[:, h] = scale * ds @ kk
        dk[:, h // g] += scale * ds.T @ q[:, h]
        dv[:, h // g] += p.T @ dout[:, h]
    return dq, dk, dv, out, lse


# --------------------------------------------------------------------------- maps

def test_a_ldsm_rc_gives_a_fragments(rng):
    """ldmatrix.x4 at a_ldsm_rc's addresses loads exactly the A registers of a_frag_rc."""
    tile = rng.integers(0, 2 ** 16, (16, 48), dtype=np.uint16)
    for kk in range(3):
        regs = L.ldmatrix_py(tile, lambda ln: BL.a_ldsm_rc(ln, kk), 4)
        for lane in range(32):
            for reg in range(4):
                r, c = L.a_frag_rc(lane, reg)
                want = int(tile[r, 16 * kk + c]) | int(tile[r, 16 * kk + c + 1]) << 16
                assert regs[lane, reg] == want, (kk, lane, reg)


def test_a_ldsm_rows_are_16_byte_aligned_and_conflict_free():
    """Each of the 4 matrices is 8 rows at one 16-byte column chunk; with the padded row
    stride those 8 rows fall into 8 distinct 16-byte bank groups."""
    for d in (64, 128, 256):
        rsb = BL.row_bytes(d)
        for i in range(4):
            addrs = [BL.a_ldsm_rc(8 * i + r, 1) for r in range(8)]
            assert all((2 * c) % 16 == 0 for _, c in addrs)
            groups = {((r * rsb + 2 * c) // 16) % 8 for r, c in addrs}
            assert len(groups) == 8, (d, i)


def test_shared_fits_sm80_and_dsplit():
    for d in range(8, 257, 8):
        assert BL.dkdv_shared(d) <= tc.MAX_SHARED_SM80 and BL.dq_shared(d) <= tc.MAX_SHARED_SM80
        # dK and dV accumulators of one warp: at most 128 fp32 registers
        assert 2 * 4 * 2 * -(-(BL.padded(d) // 16) // BL.dsplit(d)) <= 128, d


# --------------------------------------------------------------------------- emulation

def _inputs(rng, sq, sk, nh, hkv, D, dtype):
    q = rng.standard_normal((sq, nh, D)).astype(dtype)
    k = rng.standard_normal((sk, hkv, D)).astype(dtype)
    v = rng.standard_normal((sk, hkv, D)).astype(dtype)
    dout = rng.standard_normal((sq, nh, D)).astype(dtype)
    return dout, q, k, v


def _check(got, ref, what, dtype):
    """Error against float64 within the 16-bit rounding of P, dS and the inputs' scale."""
    rel = 8e-3 if np.dtype(dtype) == np.float16 else 6e-2
    tol = rel * max(1.0, np.abs(ref).max(initial=0))
    assert np.isfinite(got).all(), what
    err = np.abs(got - ref).max(initial=0)
    assert err <= tol, (what, err, tol)


CASES = [  # sq, sk, H, Hkv, D, (window), causal
    (40, 40, 1, 1, 32, (-1, -1), False),
    (37, 53, 4, 1, 32, (-1, -1), True),       # sq < sk, GQA 4, causal bottom-right
    (53, 29, 2, 2, 40, (0, 0), False),        # sq > sk: rows that see no key; D pads to 48
    (70, 70, 2, 1, 16, (9, 0), False),        # a band narrower than a tile: partial tiles
    (33, 65, 1, 1, 32, (20, 5), False),
]


@pytest.mark.parametrize("sq,sk,nh,hkv,D,window,causal", CASES)
def test_emulated_backward_matches_float64(rng, sq, sk, nh, hkv, D, window, causal):
    left, right = normalize_window(window, causal)
    dtype = np.float16
    dout, q, k, v = _inputs(rng, sq, sk, nh, hkv, D, dtype)
    scale = 1 / np.sqrt(D)
    dq_ref, dk_ref, dv_ref, out, lse = grads_f64(dout, q, k, v, scale, left, right)
    out16 = out.astype(dtype).astype(np.float32)
    delta = (dout.astype(np.float32) * out16).sum(2).T.astype(np.float32)
    lse32 = lse.astype(np.float32)
    bnk, bm, _ = BL.dkdv_config(D)
    for hk in range(hkv):
        dk, dv = emulate_dkdv(dout, q, k, v, lse32, delta, scale, left, right, hk, bnk, bm,
                              BL.dsplit(D), dtype)
        _check(dk, dk_ref[:, hk], f"dk{hk}", dtype)
        _check(dv, dv_ref[:, hk], f"dv{hk}", dtype)
    bmq, bn, _ = BL.dq_config(D)
    for h in range(nh):
        dq = emulate_dq(dout, q, k, v, lse32, delta, scale, left, right, h, bmq, bn, dtype)
        _check(dq, dq_ref[:, h], f"dq{h}", dtype)


def test_emulated_dkdv_head_split_and_bf16(rng):
    """The dK/dV slice split of head sizes above 128 (two warps per 16 keys, each half of
    the head dimension), in bfloat16, at a small size with dsplit forced to 2."""
    import ml_dtypes
    dtype = ml_dtypes.bfloat16
    sq, sk, D = 35, 30, 48
    dout, q, k, v = _inputs(rng, sq, sk, 2, 1, D, dtype)
    scale = 1 / np.sqrt(D)
    dq_ref, dk_ref, dv_ref, out, lse = grads_f64(dout, q, k, v, scale, 7, 3)
    out16 = out.astype(dtype).astype(np.float32)
    delta = (dout.astype(np.float32) * out16).sum(2).T.astype(np.float32)
    dk, dv = emulate_dkdv(dout, q, k, v, lse.astype(np.float32), delta, scale, 7, 3, 0, 32, 32,
                          2, dtype)
    _check(dk, dk_ref[:, 0], "dk", dtype)
    _check(dv, dv_ref[:, 0], "dv", dtype)
    dq = emulate_dq(dout, q, k, v, lse.astype(np.float32), delta, scale, 7, 3, 1, 64, 32, dtype)
    _check(dq, dq_ref[:, 1], "dq", dtype)


def test_reference_gradients_match_finite_differences(rng):
    """grads_f64 (this file's reference) against central differences of sum(out * dout)."""
    sq, sk, nh, hkv, D = 5, 6, 2, 1, 4
    q, k, v, dout = (rng.standard_normal(s) for s in
                     ((sq, nh, D), (sk, hkv, D), (sk, hkv, D), (sq, nh, D)))
    scale, left, right = 0.7, 2, 1
    dq, dk, dv, _, _ = grads_f64(dout, q, k, v, scale, left, right)

    def f(q_, k_, v_):
        return (grads_f64(dout, q_, k_, v_, scale, left, right)[3] * dout).sum()

    eps = 1e-6
    for x, gx, idx in ((q, dq, (3, 1, 2)), (k, dk, (2, 0, 1)), (v, dv, (4, 0, 3))):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        args_p = [xp if y is x else y for y in (q, k, v)]
        args_m = [xm if y is x else y for y in (q, k, v)]
        fd = (f(*args_p) - f(*args_m)) / (2 * eps)
        assert abs(fd - gx[idx]) < 1e-6, (idx, fd, gx[idx])


# --------------------------------------------------------------------------- contract

def _problem(**kw):
    base = dict(batch=1, total_q=128, total_k=128, max_seqlen_q=128, max_seqlen_k=128,
                num_heads=4, num_kv_heads=1, head_size=128, dtype=np.dtype(np.float16),
                softmax_scale=0.1, window_left=-1, window_right=-1, causal=False,
                lse_batched=True, on_simulator=False)
    base.update(kw)
    return Problem(**base)


def test_supports_and_targets():
    import ml_dtypes
    assert tc.NAME == "flash_tc"
    for d in (8, 64, 72, 128, 200, 256):
        assert tc.supports(_problem(head_size=d)) is None
    assert tc.supports(_problem(dtype=np.dtype(ml_dtypes.bfloat16))) is None
    for bad in (dict(dtype=np.dtype(np.float32)), dict(head_size=100), dict(head_size=264),
                dict(on_simulator=True)):
        reason = tc.supports(_problem(**bad))
        assert isinstance(reason, str) and reason, bad
    assert tc.compile_targets(128, np.float32) == [] and tc.compile_targets(100, "float16") == []
    labels = [t[0] for t in tc.compile_targets(128, "bfloat16")]
    assert len(labels) == 6 and all("d128_bfloat16" in x for x in labels)   # 3 + 3 atomic-dQ


@pytest.mark.parametrize("d,group,lse_batched,total_q", [(128, 4, True, 8192), (256, 1, False, 97),
                                                          (64, 8, True, 0)])
def test_plan_contract(d, group, lse_batched, total_q):
    """Three launches (two when there are no query rows), each naming only call arrays and
    scratch, with grids that cover every key tile / query tile of the longest sequence and
    shared memory an sm_80 block may opt in to."""
    from attn_numba.kernels import BWD_ARRAYS, get_bwd
    assert get_bwd("flash_tc") is tc
    p = _problem(head_size=d, num_heads=8, num_kv_heads=8 // group, total_q=total_q,
                 max_seqlen_q=max(total_q, 0), max_seqlen_k=300, total_k=300,
                 lse_batched=lse_batched, on_simulator=True)
    names = set(BWD_ARRAYS) | {s.name for s in tc.scratch(p)}
    assert [s.name for s in tc.scratch(p)] == ["delta"]
    assert tc.scratch(p)[0].shape == (8, max(total_q, 1))
    plans = tc.plan(p)
    assert len(plans) == (3 if total_q else 2)
    for pl in plans:
        assert set(pl.arrays) <= names and len(pl.views) <= len(pl.arrays)
        assert all(g >= 1 for g in pl.griddim) and pl.shared <= tc.MAX_SHARED_SM80
    dkdv, dq = plans[-2], plans[-1]
    assert "dk" in dkdv.arrays and "dv" in dkdv.arrays and "dq" in dq.arrays
    bnk, _, _ = BL.dkdv_config(d)
    assert dkdv.griddim == (-(-300 // bnk), 8 // group, 1)
    assert dq.griddim == (max(-(-total_q // 64), 1), 8, 1)
    assert dkdv.scalars[-1] is lse_batched and dkdv.scalars == dq.scalars
    if total_q:
        assert plans[0].arrays == ("dout", "out", "delta")
        assert plans[0].griddim[0] * tc.DELTA_WARPS >= total_q * 8


# --------------------------------------------------------------------------- real kernels

def _sim_arrays(dout, q, k, v, lse, cu_q, cu_k, scale, left, right, causal, lse_batched,
                dtype):
    """(problem, simulator device arrays) of a call; dq, dk, dv start as NaN (16-bit words
    0xFFFF)."""
    from numba import cuda
    sl_q, sl_k = np.diff(cu_q), np.diff(cu_k)
    p = _problem(batch=len(sl_q), total_q=q.shape[0], total_k=k.shape[0],
                 max_seqlen_q=int(sl_q.max()), max_seqlen_k=int(sl_k.max()),
                 num_heads=q.shape[1], num_kv_heads=k.shape[1], head_size=q.shape[2],
                 dtype=np.dtype(dtype), softmax_scale=scale, window_left=left,
                 window_right=right, causal=causal, lse_batched=lse_batched, on_simulator=True)
    bits = lambda x: cuda.to_device(np.ascontiguousarray(x).view(np.uint16))  # noqa: E731
    nan16 = lambda x: cuda.to_device(np.full(x.shape, 0xFFFF, np.uint16))  # noqa: E731
    out_dummy = np.zeros_like(q)
    arrays = dict(dout=bits(dout), q=bits(q), k=bits(k), v=bits(v), out=bits(out_dummy),
                  lse=cuda.to_device(lse), dq=nan16(q), dk=nan16(k), dv=nan16(v),
                  cu_seqlens_q=cuda.to_device(cu_q), cu_seqlens_k=cuda.to_device(cu_k))
    return p, arrays


def _sim_case(monkeypatch, rng, seqlens_q, seqlens_k, nh, hkv, D, window, causal,
              lse_batched, dtype=np.float16, module=None, **variant):
    """One call of ``module``'s plan (default: flash_tc's) on the simulator, checked."""
    from numba import cuda
    from attn_numba.kernels import bwd_tc_sim, launch_plans
    left, right = normalize_window(window, causal)
    cu_q = np.concatenate([[0], np.cumsum(seqlens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(seqlens_k)]).astype(np.int32)
    dout, q, k, v = _inputs(rng, int(cu_q[-1]), int(cu_k[-1]), nh, hkv, D, dtype)
    scale = 1 / np.sqrt(D)
    refs, outs, lses = [], np.zeros(q.shape, np.float64), np.full((nh, q.shape[0]), -np.inf)
    for b in range(len(seqlens_q)):
        a0, a1, c0, c1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        r = grads_f64(dout[a0:a1], q[a0:a1], k[c0:c1], v[c0:c1], scale, left, right)
        refs.append(r)
        outs[a0:a1], lses[:, a0:a1] = r[3], r[4]
    out16 = outs.astype(dtype)
    if lse_batched:
        s = seqlens_q[0]
        lse = lses.reshape(nh, len(seqlens_q), s).transpose(1, 0, 2).astype(np.float32).copy()
    else:
        lse = lses[None].astype(np.float32).copy()
    p, arrays = _sim_arrays(dout, q, k, v, lse, cu_q, cu_k, scale, left, right, causal,
                            lse_batched, dtype)
    arrays["out"] = cuda.to_device(np.ascontiguousarray(out16).view(np.uint16))
    mod = tc if module is None else module
    for sc in mod.scratch(p, variant.get("deterministic")):   # uninitialised: NaN
        arrays[sc.name] = cuda.to_device(np.full(sc.shape, np.nan, sc.dtype))
    with bwd_tc_sim.patched(monkeypatch):
        launch_plans(mod.plan(p, **variant), arrays)
    got = {n: arrays[n].copy_to_host().view(dtype).astype(np.float32) for n in ("dq", "dk", "dv")}
    delta_ref = (dout.astype(np.float32) * out16.astype(np.float32)).sum(2).T
    if q.shape[0]:
        np.testing.assert_allclose(arrays["delta"].copy_to_host()[:, :q.shape[0]], delta_ref,
                                   rtol=1e-5, atol=1e-5)
    for b, (dq_r, dk_r, dv_r, _, _) in enumerate(refs):
        a0, a1, c0, c1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        _check(got["dq"][a0:a1], dq_r, f"dq seq {b}", dtype)
        _check(got["dk"][c0:c1], dk_r, f"dk seq {b}", dtype)
        _check(got["dv"][c0:c1], dv_r, f"dv seq {b}", dtype)
    return got


SIM_CASES = [  # seqlens_q, seqlens_k, H, Hkv, D, window, causal, lse_batched
    ([40], [40], 2, 1, 32, (-1, -1), False, True),
    ([21, 0, 70], [50, 9, 33], 2, 2, 16, (-1, -1), True, False),     # varlen, an empty one
    ([75], [30], 4, 1, 24, (0, 0), False, True),                     # rows with no key
    ([66, 66], [66, 66], 2, 1, 16, (9, 4), False, True),             # batched lse layout
    ([33], [45], 8, 1, 16, (5, 0), False, True),                     # GQA 8, window (W, 0)
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SIM_CASES, ids=lambda c: "-".join(map(str, c[:5])))
def test_kernels_on_simulator(monkeypatch, rng, case):
    """The real dK/dV, dQ and delta kernels, run on the simulator with instruction models
    (bwd_tc_sim), against float64 gradients; every output element written."""
    _sim_case(monkeypatch, rng, *case)


@pytest.mark.slow
def test_kernels_on_simulator_head_split_bf16(monkeypatch, rng):
    """Head size 136 (padded 144: two warps per 16 keys in the dK/dV pass, split 5 + 4
    column pairs), bfloat16."""
    import ml_dtypes
    assert BL.dsplit(136) == 2
    _sim_case(monkeypatch, rng, [20], [33], 2, 1, 136, (-1, -1), False, True, ml_dtypes.bfloat16)


@pytest.mark.slow
def test_kernels_on_simulator_variants(monkeypatch, rng):
    """The single-stage pipelines, 16-query tiles in dK/dV and 64-key tiles in dQ."""
    _sim_case(monkeypatch, rng, [50, 29], [45, 70], 2, 1, 16, (20, 3), False, False,
              dkdv=(64, 16, 1), dq=(64, 64, 1))


def test_kernels_on_simulator_quick(monkeypatch, rng):
    _sim_case(monkeypatch, rng, [20], [37], 2, 1, 16, (-1, -1), True, True)


def test_mha_bwd_refuses_flash_tc_on_simulator(rng):
    """On the simulator the public call names the kernel and why, before any launch."""
    import attn_numba
    from attn_numba.kernels import BWD_KERNEL_NAMES
    assert "flash_tc" in BWD_KERNEL_NAMES
    q = rng.standard_normal((1, 8, 2, 64)).astype(np.float16)
    lse = np.zeros((1, 2, 8), np.float32)
    with pytest.raises(ValueError, match="flash_tc.*simulator"):
        attn_numba.mha_bwd(q, q, q, q, q, lse, kernel="flash_tc")
