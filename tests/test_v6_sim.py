"""flash_ws's whole kernel on Numba's CUDA simulator, launched from its plan: every block's
own maps (the template copied into the call's scratch, the call's addresses written), both roles
with the TMA / mbarrier intrinsics replaced by their models (attn_numba.kernels.v6_ptx_sim)
and wgmma by flash_wgmma's (ptx_sm90_sim). Checks the producer's boxes, the consumers' rows,
masks, GQA packing, varlen with empty sequences, lse, the overlapped loop and the consumers'
turns (pingpong) against the float64 reference, outputs poisoned first. With at least as
many stages as key tiles (the model's limit: see v6_ptx_sim); not the asynchronous hazards
(scripts/gpu_v6_check.py)."""
import math

import ml_dtypes
import numpy as np
import pytest

from attn_numba.kernels import v6_flash_ws as v6
from attn_numba.problem import Problem
from attn_numba.reference import mha_varlen_fwd_ref

from conftest import SIM

pytestmark = pytest.mark.skipif(not SIM, reason="simulator models of the intrinsics")
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOOR = {np.dtype(np.float16): 2e-3, BF16: 1.6e-2}


def _run(rng, seq_q, seq_k, h, hkv, d, dtype, window, causal, batched=False, ramp=0.0, **kw):
    """The kernel's plan on the models against the float64 reference; ``ramp``: keys scaled
    by up to ``1 + ramp`` along the keys, so that the running maxima grow tile by tile."""
    from attn_numba.kernels import launch_plans
    dtype = np.dtype(dtype)
    cu_q = np.concatenate([[0], np.cumsum(seq_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(seq_k)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], h, d)).astype(dtype)
    k = rng.standard_normal((cu_k[-1], hkv, d))
    k = (k * (1 + ramp * np.linspace(0, 1, cu_k[-1])[:, None, None])).astype(dtype)
    v = rng.standard_normal((cu_k[-1], hkv, d)).astype(dtype)
    left, right = window[0], 0 if causal else window[1]
    p = Problem(batch=len(seq_q), total_q=int(cu_q[-1]), total_k=int(cu_k[-1]),
                max_seqlen_q=max(seq_q), max_seqlen_k=max(seq_k), num_heads=h,
                num_kv_heads=hkv, head_size=d, dtype=dtype, softmax_scale=1 / math.sqrt(d),
                window_left=left, window_right=right, causal=causal, lse_batched=batched,
                on_simulator=True)
    kw.setdefault("persistent", False)   # the model's limit: a producer never waits
    q16, k16, v16 = (x.view(np.uint16) for x in (q, k, v))
    out = np.full(q.shape, 0xFFFF, np.uint16)                 # NaN in fp16 and bf16
    # a batched call (equal lengths): lse[b, h, i], and the lengths passed as scalars
    lse = np.full((len(seq_q), h, max(seq_q)) if batched else (1, h, p.total_q), np.nan,
                  np.float32)
    # the module's own plan and scratch (every block copies the template maps into its
    # slot and writes the call's addresses there), as the call path launches them
    (plan,) = v6.plan(p, **kw)
    (maps,) = v6.scratch(p, **kw)
    assert maps.shape[0] == plan.griddim[0] * plan.griddim[1] * plan.griddim[2] * 64
    arrays = dict(q=q16, k=k16, v=v16, out=out, lse=lse, cu_seqlens_q=cu_q,
                  cu_seqlens_k=cu_k, maps=np.full(maps.shape, -1, np.int64))
    launch_plans((plan,), arrays)
    ref, ref_lse = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, causal=causal, window_size=window)
    low, _ = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, causal=causal, window_size=window,
                                p_dtype=dtype)
    tol = 2 * np.abs(low.astype(dtype).astype(np.float64) - ref).max(initial=0) + FLOOR[dtype]
    if batched:
        if v6.UNIFORM_LENGTHS:
            assert tuple(map(int, plan.scalars[4:6])) == (max(seq_q), max(seq_k))
        lse = lse.transpose(1, 0, 2).reshape(1, h, p.total_q)
    return out.view(dtype).astype(np.float64), lse[0], ref, ref_lse, tol


_SLOW = pytest.mark.slow
CASES = [  # seq_q, seq_k, H, Hkv, D, dtype, window, causal, options (stages >= key tiles)
    ([20], [20], 4, 1, 64, np.float16, (-1, -1), False, dict(stages=2)),
    # the plain loop and the direct epilogue (the defaults before run 48)
    pytest.param(([30, 0, 5, 40], [40, 3, 0, 66], 8, 2, 64, np.float16, (20, 20), False,
                  dict(stages=2, overlap=False, staged=False)), marks=_SLOW),
    pytest.param(([70], [150], 2, 2, 128, BF16, (-1, -1), True, dict(stages=3)), marks=_SLOW),
    pytest.param(([1], [1], 8, 1, 128, np.float16, (0, 0), False, dict(stages=2)), marks=_SLOW),
    pytest.param(([60], [120], 4, 2, 64, np.float16, (-1, -1), False,
                  dict(stages=2, overlap=True)), marks=_SLOW),
    pytest.param(([100], [180], 2, 2, 64, BF16, (16, 8), False, dict(stages=3, overlap=True)),
                 marks=_SLOW),
    pytest.param(([90], [40], 4, 4, 128, np.float16, (-1, -1), True,
                  dict(stages=2, block_n=128, overlap=False)), marks=_SLOW),
    # without the consumers' tensor-core turns and the lean softmax (the defaults since run
    # 33; the turns' named barriers are order only, no-ops in the model)
    pytest.param(([40, 0, 25], [70, 9, 0], 4, 1, 64, np.float16, (16, 16), False,
                  dict(stages=2, pingpong=False, lean=False)), marks=_SLOW),
    pytest.param(([100], [180], 2, 2, 64, BF16, (16, 8), False,
                  dict(stages=3, overlap=True, pingpong=True)), marks=_SLOW),
    # the persistent grid, one work tile per block (the model's limit: a producer that
    # waits for Q-empty would hold the consumers' block-barrier models); varlen with an
    # empty query and an empty key sequence, masked tiles
    pytest.param(([20, 0, 9], [20, 3, 0], 4, 1, 64, np.float16, (8, 8), False,
                  dict(stages=2, persistent=True, blocks=10 ** 6)), marks=_SLOW),
    pytest.param(([30, 0, 5, 40], [40, 3, 0, 66], 8, 2, 64, np.float16, (20, 20), False,
                  dict(stages=2, persistent=True, blocks=10 ** 6)), marks=_SLOW),
    # the template maps as kernel parameters (param_maps, the tile grid's default: the
    # first case) written by thread 32 and acquired by thread 0 (opt-in split_maps); the
    # template loaded from global memory (the persistent grid's default; with the opt-in
    # prefetch of the maps, a no-op in the model); persistent
    ([20, 0, 9], [20, 3, 0], 4, 1, 64, np.float16, (8, 8), False,
     dict(stages=2, param_maps=True, split_maps=True, overlap=False, staged=False)),
    ([20, 0, 9], [20, 3, 0], 4, 1, 64, np.float16, (8, 8), False,
     dict(stages=2, param_maps=False, prefetch_maps=True)),
    pytest.param(([30, 0, 5, 40], [40, 3, 0, 66], 8, 2, 64, np.float16, (20, 20), False,
                  dict(stages=2, persistent=True, blocks=10 ** 6, param_maps=True)),
                 marks=_SLOW),
    # the lean softmax (scale in the exponent, keep-mask masks), masked tiles, rows with no key
    pytest.param(([30, 0, 5, 40], [40, 3, 0, 66], 8, 2, 64, BF16, (20, 20), False,
                  dict(stages=2, pingpong=True, lean=True)), marks=_SLOW),
    pytest.param(([90], [140], 4, 4, 128, np.float16, (-1, -1), True,
                  dict(stages=2, block_n=128, overlap=True, pingpong=True, lean=True)),
                 marks=_SLOW),
    # the staged epilogue (O through shared memory, 16-byte stores): varlen with empty
    # sequences and partial tiles (rows past a sequence never written), 1, 2 and 4 heads per
    # tile, the persistent grid, with the overlapped loop
    ([20, 0, 9], [20, 3, 0], 4, 1, 64, np.float16, (8, 8), False, dict(stages=2, staged=True)),
    # the staged epilogue with TMA stores (tma_out, opt-in): whole tiles of 4, 2 and 1
    # heads by TMA, partial ones copied out
    ([20, 0, 9], [20, 3, 0], 4, 1, 64, np.float16, (8, 8), False,
     dict(stages=2, staged=True, tma_out=True)),
    pytest.param(([70, 64], [80, 64], 2, 1, 128, BF16, (-1, -1), False,
                  dict(stages=2, tma_out=True)), marks=_SLOW),
    pytest.param(([128, 128], [128, 128], 2, 2, 64, np.float16, (16, 16), False,
                  dict(stages=2, tma_out=True, batched=True)), marks=_SLOW),
    pytest.param(([40, 33], [50, 40], 4, 1, 64, np.float16, (-1, -1), True,
                  dict(stages=2, tma_out=True, persistent=True, blocks=10 ** 6)), marks=_SLOW),
    pytest.param(([30, 0, 5], [40, 3, 0], 4, 1, 128, BF16, (20, 20), False,
                  dict(stages=2, staged=True, persistent=True, blocks=10 ** 6)), marks=_SLOW),
    pytest.param(([45], [70], 2, 1, 64, np.float16, (-1, -1), True,
                  dict(stages=2, staged=True, overlap=True)), marks=_SLOW),
    # a batched call (every sequence as long): the lengths passed, no cu_seqlens read; one
    # block per tile (quick) and persistent, sq != sk
    ([33, 33, 33], [33, 33, 33], 4, 1, 64, np.float16, (-1, -1), True,
     dict(stages=2, batched=True)),
    pytest.param(([20, 20], [50, 50], 4, 2, 64, BF16, (8, 8), False,
                  dict(stages=2, batched=True, persistent=True, blocks=10 ** 6)), marks=_SLOW),
    # the lazy softmax (lazy_rescale, the default since run 60, so in every case that does
    # not turn it off): keys scaled up along the sequence so that the maxima move past the
    # threshold tile after tile (ramp), and plain inputs, where they rarely do; both loops,
    # masked tiles, rows with no key
    ([150], [150], 4, 1, 64, np.float16, (-1, -1), True,
     dict(stages=3, lazy_rescale=True, ramp=12.0)),
    pytest.param(([30, 0, 5, 40], [40, 3, 0, 66], 8, 2, 64, BF16, (20, 20), False,
                  dict(stages=2, lazy_rescale=True, ramp=12.0)), marks=_SLOW),
    pytest.param(([70], [190], 2, 2, 128, BF16, (-1, -1), False,
                  dict(stages=3, lazy_rescale=True, overlap=False, ramp=12.0)), marks=_SLOW),
    pytest.param(([70], [190], 4, 4, 64, np.float16, (-1, -1), True,
                  dict(stages=3, lazy_rescale=True)), marks=_SLOW),
    # the module's defaults at D = 128 (BN 64, 3 stages, the tile grid's plain loop, lazy
    # softmax, staged epilogue)
    pytest.param(([20, 0, 9], [130, 3, 0], 4, 1, 128, np.float16, (-1, -1), True, {}),
                 marks=_SLOW),
]


def _id(c):
    return (f"{c[0]}x{c[1]}-h{c[2]}/{c[3]}-d{c[4]}-{np.dtype(c[5]).name}-{c[6]}-{c[7]}-"
            f"{sorted(c[8].items())}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: _id(c) if isinstance(c, tuple) else None)
def test_flash_ws_matches_reference_on_the_models(rng, case):
    *args, kw = case
    out, lse, ref, ref_lse, tol = _run(rng, *args, **kw)
    assert np.isfinite(out).all()
    err = np.abs(out - ref).max(initial=0)
    assert err <= tol, (err, tol)
    ref_lse = np.asarray(ref_lse).reshape(lse.shape)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[fin], ref_lse[fin], rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_a_wrong_q_box_offset_fails_the_check(rng, monkeypatch):
    """The check can fail: Q boxes of the second head slot landing one 8-row group off."""
    from attn_numba.kernels import v6_layout, v6_roles
    good = v6_layout.q_box_offset

    def shifted(consumer, head_slot, cb, head_size, heads):
        return good(consumer, head_slot, cb, head_size, heads) + 1024 * (head_slot == 1)

    monkeypatch.setattr(v6_roles, "_q_box_offset", shifted)
    v6_roles.roles.cache_clear()
    v6._build.cache_clear()
    try:
        out, _, ref, _, tol = _run(rng, [20], [20], 4, 1, 64, np.float16, (-1, -1), False,
                                   stages=2)
        assert not np.abs(out - ref).max(initial=0) <= tol
    finally:
        v6_roles.roles.cache_clear()
        v6._build.cache_clear()


@pytest.mark.slow
def test_a_lazy_softmax_that_never_rescales_fails_the_check(rng, monkeypatch):
    """The check can fail: with the ramp the maxima move, and O must follow them."""
    from attn_numba.kernels import softmax, v5_steps, v6_roles

    def never(n_regs, vote_any):
        return softmax.rescale_if(n_regs, lambda p: False)

    monkeypatch.setattr(v5_steps, "rescale_if", never)
    caches = (v5_steps.steps, v6_roles.roles, v6._build)
    for f in caches:
        f.cache_clear()
    try:
        out, _, ref, _, tol = _run(rng, [150], [150], 4, 1, 64, np.float16, (-1, -1), True,
                                   stages=3, lazy_rescale=True, ramp=12.0)
        assert not np.abs(out - ref).max(initial=0) <= tol
    finally:
        for f in caches:
            f.cache_clear()


def _plain_chunk(r, c, head_size, heads):
    return r * 2 * head_size + (c << 4)


def _plain_box_chunk(g, head_size, heads):
    """o_box_chunk without the 128-byte swizzle: chunk g % 8 of its box row."""
    from attn_numba.kernels import v6_layout
    off, pos, head, col = v6_layout.o_box_chunk(g, head_size, heads)
    return (off & ~0x70) | ((g & 7) << 4), pos, head, col


@pytest.mark.slow
@pytest.mark.parametrize("tma_out", [False, True], ids=["chunks", "boxed"])
def test_a_staged_epilogue_reading_unswizzled_chunks_fails_the_check(rng, monkeypatch, tma_out):
    """The check can fail: the staged epilogue's reads (16-byte chunks out of the O tile,
    or, with tma_out, out of the boxed tile of a tile reaching past its sequence) missing the
    stores' swizzle."""
    from attn_numba.kernels import v6_epilogue, v6_roles

    if tma_out:
        monkeypatch.setattr(v6_epilogue, "_box_chunk", _plain_box_chunk)
    else:
        monkeypatch.setattr(v6_epilogue, "_chunk", _plain_chunk)
    caches = (v6_epilogue.staged, v6_epilogue.boxed, v6_roles.roles, v6._build)
    for f in caches:
        f.cache_clear()
    try:
        out, _, ref, _, tol = _run(rng, [20], [20], 4, 1, 64, np.float16, (-1, -1), False,
                                   stages=2, staged=True, tma_out=tma_out)
        assert not np.abs(out - ref).max(initial=0) <= tol
    finally:
        for f in caches:
            f.cache_clear()


@pytest.mark.slow
def test_debug_build_with_bounded_waits_still_matches(rng, capsys):
    """debug_waits=True (bounded waits that print a timeout) changes nothing when no wait
    hangs: same result, no timeout line."""
    out, _, ref, _, tol = _run(rng, [20], [20], 4, 1, 64, np.float16, (-1, -1), False,
                               stages=2, debug_waits=True)
    assert np.abs(out - ref).max(initial=0) <= tol
    assert "timed out" not in capsys.readouterr().out
