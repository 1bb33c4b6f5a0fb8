"""flash_ws (v6) on the CPU: the tensor-map arithmetic, the module contract (what it refuses, and
why), and the kernel compiled for sm_90a and assembled by ptxas (registers at entry with the
setmaxnreg budgets honoured, no spills, the TMA and wgmma instructions present). The encode
and the kernel itself run on the H200 only: scripts/gpu_v6_check.py."""
import dataclasses
import json
import re
import textwrap

import numpy as np
import pytest

from attn_numba import kernels, tensormap
from attn_numba.kernels import v6_flash_ws as v6
from attn_numba.kernels import v6_layout as lay
from attn_numba.problem import Problem
from test_ptx_tma import compile_ptx_of, ptxas


def test_tiled_spec_of_a_q_array():
    s = tensormap.tiled_spec("f16", (8192, 32, 128), 16)
    assert s.dims == (128, 32, 8192)
    assert s.strides == (256, 32 * 256)            # bytes, rank - 1 entries
    assert s.box == (64, 1, 16)
    assert tensormap.box_bytes(s) == 16 * 128


def test_tiled_spec_keeps_empty_tensors_encodable():
    assert tensormap.tiled_spec("bf16", (0, 8, 64), 64).dims == (64, 8, 1)


@pytest.mark.parametrize("kw,match", [
    (dict(kind="f32", shape=(4, 2, 64), box_rows=16), "kind"),
    (dict(kind="f16", shape=(4, 64), box_rows=16), "shape"),
    (dict(kind="f16", shape=(4, 2, 96), box_rows=16), "box_cols"),
    (dict(kind="f16", shape=(4, 2, 64), box_rows=16, box_cols=128), "box_cols"),
    (dict(kind="f16", shape=(4, 2, 64), box_rows=257), "box_rows"),
    (dict(kind="f16", shape=(4, 0, 64), box_rows=16), "heads"),
])
def test_tiled_spec_rejects_what_the_hardware_refuses(kw, match):
    with pytest.raises(ValueError, match=match):
        tensormap.tiled_spec(**kw)


def test_template_maps_made_once_per_specialisation(monkeypatch):
    """Template maps are encoded once per (owner, specs), over their own buffer's address
    (a placeholder: each block replaces it with the call's), and kept."""
    calls = []
    monkeypatch.setattr(tensormap, "encode", lambda spec, addr: calls.append(addr) or
                        bytes(tensormap.MAP_BYTES))
    monkeypatch.setattr(tensormap, "_upload", lambda blobs, buffer: buffer)
    monkeypatch.setattr(tensormap, "_address", lambda buf: 4096)
    monkeypatch.setattr(tensormap, "_TEMPLATES", {})
    spec = tensormap.tiled_spec("f16", (100, 4, 64), 16)
    a = tensormap.template_maps((spec,) * 3, "one")
    b = tensormap.template_maps((spec,) * 3, "one")
    c = tensormap.template_maps((spec,) * 3, "two")
    assert a is b and a is not c and calls == [4096] * 6
    assert len(a.buffer) == 3 * tensormap.MAP_BYTES and a.address == 4096


def _problem(**kw):
    base = dict(batch=1, total_q=97, total_k=97, max_seqlen_q=97, max_seqlen_k=97,
                num_heads=8, num_kv_heads=2, head_size=128, dtype=np.dtype(np.float16),
                softmax_scale=0.1, window_left=-1, window_right=-1, causal=False,
                lse_batched=True, on_simulator=False)
    base.update(kw)
    return Problem(**base)


@pytest.mark.parametrize("kw,match", [
    (dict(on_simulator=True), "simulator"),
    (dict(dtype=np.dtype(np.float32)), "fp16/bf16"),
    (dict(head_size=256), "head_size"),
    (dict(head_size=96), "head_size"),
])
def test_supports_says_why_not(kw, match):
    assert re.search(match, v6.supports(_problem(**kw)))


def test_configure_packs_a_gqa_group_into_128_rows():
    p = _problem(max_seqlen_q=8192, total_q=8192, total_k=8192, max_seqlen_k=8192,
                 num_heads=32, num_kv_heads=8)
    _, grid, shared, hb, bn, extra = v6.configure(p, persistent=False, block_n=64)
    assert (hb, bn) == (4, 64) and grid == (256, 8, 1)         # 32 positions x 4 heads
    assert shared == lay.shared_bytes(128, 64, 3, True, v6.TMA_OUT) and extra == ()
    q, k, v = v6.map_specs(p, hb, bn)
    assert q.box == (64, 1, 16) and k.box == (64, 1, 64) and k == v
    _, grid1, *_ = v6.configure(dataclasses.replace(p, num_kv_heads=32), persistent=False)
    assert grid1 == (64, 32, 1)                                  # 128 positions x 1 head


def test_configure_persistent_grid_takes_the_work_tiles_in_turn():
    """The defaults: BN 64 in 3 stages with the staged epilogue, one block per SM (here 132)
    over the 256 x 8 work tiles, whose shape goes to the kernel as (nx, ny, n_work); never
    more blocks than work tiles."""
    p = _problem(max_seqlen_q=8192, total_q=8192, total_k=8192, max_seqlen_k=8192,
                 num_heads=32, num_kv_heads=8)
    _, grid, shared, hb, bn, extra = v6.configure(p, blocks=132)
    assert (hb, bn, grid) == (4, 64, (132, 1, 1))
    assert tuple(map(int, extra)) == (256, 8, 2048)
    assert shared == lay.shared_bytes(128, 64, 3, True, v6.TMA_OUT)
    small = dataclasses.replace(p, max_seqlen_q=40, total_q=40)
    _, grid, _, _, _, extra = v6.configure(small, blocks=132, persistent=True)
    assert grid == (16, 1, 1) and tuple(map(int, extra)) == (2, 8, 16)
    # by default, 16 work tiles for 132 blocks: one block per tile, not the persistent grid
    k_tiles, grid, _, _, _, extra = v6.configure(small, blocks=132)
    assert grid == (2, 8, 1) and extra == ()
    assert k_tiles is v6.build(128, "f16", 4, persistent=False)
    assert v6.configure(small, blocks=16)[1] == (2, 8, 1)        # 16 tiles, 16 blocks
    assert v6.configure(small, blocks=15)[1] == (15, 1, 1)       # one more tile than blocks


def test_map_mode_per_grid():
    """The template maps as parameters on the one-block-per-tile grid only (the persistent
    grid loads the template: parameters were slower there, run 44), written by thread 0
    (thread 32 was slower, run 53); split_maps never without param_maps or on the
    persistent grid; overrides win."""
    assert v6.map_mode(False) == (True, False)
    assert v6.map_mode(True) == (False, False)
    assert v6.map_mode(False, split_maps=True) == (True, True)
    assert v6.map_mode(False, param_maps=False) == (False, False)
    assert v6.map_mode(False, param_maps=False, split_maps=True) == (False, False)
    assert v6.map_mode(True, param_maps=True) == (True, False)
    assert v6.map_mode(True, param_maps=True, split_maps=True) == (True, False)
    assert v6.build(128, "f16", 4, persistent=False) is \
        v6.build(128, "f16", 4, persistent=False, param_maps=True, split_maps=False)


def test_configure_drops_the_default_staged_epilogue_where_it_does_not_fit():
    """BN 128 in 3 stages leaves no room for the O tiles: the default epilogue falls back to
    direct stores; asking for the staged one there is refused, naming what does not fit."""
    p = _problem(max_seqlen_q=8192, total_q=8192, total_k=8192, max_seqlen_k=8192,
                 num_heads=32, num_kv_heads=8)
    kernel, _, shared, *_ = v6.configure(p, blocks=132, block_n=128, stages=3)
    assert shared == lay.shared_bytes(128, 128, 3) <= v6.MAX_SHARED
    assert kernel is v6.build(128, "f16", 4, 128, 3, persistent=True, staged=False)
    assert v6.build(128, "f16", 4, 128, 3) is v6.build(128, "f16", 4, 128, 3, staged=False)
    with pytest.raises(ValueError, match=r"block_n=128, stages=3, staged need \d+ bytes"):
        v6.configure(p, blocks=132, block_n=128, stages=3, staged=True)


def test_compile_targets_cover_the_kernel():
    labels = [t[0] for t in v6.compile_targets(128, np.float16)]
    assert labels == ["flash_ws_kernel_f16_d128_h4", "flash_ws_kernel_f16_d128_h4_tiles"]
    assert v6.compile_targets(256, np.float16) == []
    assert v6.compile_targets(64, np.float32) == []


_COMPILE = textwrap.dedent("""
    import json, sys
    from numba import cuda
    from attn_numba.kernels import v6_flash_ws as v6
    out = {}
    for d, kind, hb, bn, st, *ov in json.loads(sys.argv[1]):
        pers = bool(len(ov) > 3 and ov[3])
        pm = bool(len(ov) > 4 and ov[4])
        k = v6.build(d, kind, hb, bn, st, bool(ov and ov[0]),
                     pingpong=bool(len(ov) > 1 and ov[1]), lean=bool(len(ov) > 2 and ov[2]),
                     persistent=pers, param_maps=pm, staged=bool(len(ov) > 5 and ov[5]),
                     split_maps=bool(ov[6]) if len(ov) > 6 else None,
                     prefetch_maps=bool(ov[7]) if len(ov) > 7 else None,
                     tma_out=bool(ov[8]) if len(ov) > 8 else None,
                     lazy_rescale=bool(ov[9]) if len(ov) > 9 else None)
        ptx, _ = cuda.compile_ptx(k.py_func, v6._signature(pers, pm), cc=(9, 0, "a"),
                                  launch_bounds=(v6.THREADS, 1))
        out["-".join(map(str, [d, kind, hb, bn, st, *ov]))] = ptx
    print(json.dumps(out))
""")


def _check_variant(ptx, d, bn, tmp_path, name, overlap=False, pingpong=False,
                   param_maps=False, staged=False, prefetch=False, tma_out=None, heads=4,
                   lazy=None):
    tma = staged and (v6.TMA_OUT if tma_out is None else bool(tma_out))
    lazy = v6.LAZY_RESCALE if lazy is None else bool(lazy)
    # the lazy softmax: one warp vote before each rescale of O (the overlapped loop has two
    # call sites: in the loop and before the last PV)
    assert ptx.count("vote.sync.any.pred") == ((2 if overlap else 1) if lazy else 0)
    # the overlapped loop peels its first QK^T and last PV: every wgmma appears twice
    assert ptx.count("wgmma.mma_async") == (d // 16 + bn // 16) * (2 if overlap else 1)
    # the consumers' turns (v6_turns.scheduler): the block's one __syncthreads, then the
    # plain loop's sync before it and before PV, its init, in-loop and final arrive; the
    # overlapped loop's sync before its first QK^T and in the loop, its init, first and
    # in-loop arrive; the staged epilogue's two named barriers
    turns = (2, 3) if pingpong else (0, 0)
    assert (ptx.count("bar.sync") - 1 - 2 * staged, ptx.count("bar.arrive")) == turns
    # the staged epilogue: D/4 32-bit stores per thread into the tile, D/16 chunks out
    assert ptx.count("st.shared.u32") == (d // 4 if staged else 0)
    assert ptx.count("ld.shared.v4.b32") == ptx.count("st.global.v4.b32") == \
        (d // 16 if staged else 0)
    assert "cp.async.bulk.tensor.3d.shared::cluster.global" in ptx
    # tma_out: whole tiles leave by one TMA store per head and 64 columns, then a wait for
    # their reads; the others are still copied out (the counts above)
    assert ptx.count("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group") == \
        (heads * d // 64 if tma else 0)
    assert ptx.count("cp.async.bulk.wait_group.read 0") == (1 if tma else 0)
    # the block's own maps: three templates copied (24 x 16 bytes, one asm block; with
    # param_maps stored from the kernel's parameters, no load), the call's addresses
    # written, one release, three acquires; with tma_out a fourth map (Q's template, the
    # output's address), acquired and prefetched by the consumer that stores through it;
    # every wait has the suspend hint
    n = 4 if tma else 3
    assert ptx.count("ld.global.v2.b64") == (0 if param_maps else 8 * n)
    assert ptx.count("st.global.v2.b64") == 8 * n
    assert ptx.count("tensormap.replace.tile.global_address.global.b1024.b64") == n
    assert ptx.count("fence.proxy.tensormap::generic.release.gpu") == 1
    assert ptx.count("fence.proxy.tensormap::generic.acquire.gpu") == n
    assert ptx.count("prefetch.tensormap") == (3 if prefetch else 0) + (n - 3)
    hint = "0x989680"
    waits = ptx.count("mbarrier.try_wait.parity.shared::cta.b64")
    assert waits > 0 and ptx.count(hint) == waits
    assert "setmaxnreg.dec.sync.aligned.u32 24" in ptx
    assert "setmaxnreg.inc.sync.aligned.u32 240" in ptx
    assert ".maxntid 384" in ptx and ".minnctapersm 1" in ptx
    assert "ld.local" not in ptx and "st.local" not in ptx
    rc, log = ptxas(ptx, tmp_path, name)
    assert rc == 0, log[-3000:]
    assert "C7508" not in log, "ptxas ignored setmaxnreg"
    assert "C7514" not in log and "C7519" not in log, log   # no serialised wgmma
    # the overlapped loop keeps tile j-1's row corrections across the loop's back edge: its
    # one-block-per-tile kernels spill one 4-byte value, stored in the prologue and loaded
    # in the epilogue, outside the key loop (cuobjdump -sass, notes/v6_flash_ws.md, run 48)
    spill = int(re.search(r"(\d+) bytes spill stores", log).group(1))
    assert spill <= (4 if overlap else 0), log
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    assert regs <= 168, regs                                # the entry budget of 384 threads


def _compile(tmp_path, variants):
    script = _COMPILE.replace("json.loads(sys.argv[1])", repr(json.loads(json.dumps(variants))))
    return compile_ptx_of(script)


@pytest.mark.slow
def test_kernel_compiles_and_assembles_d128_f16(tmp_path):
    # the defaults: the persistent grid, and one block per tile (the maps from parameters,
    # the plain loop)
    ptxs = _compile(tmp_path, [[128, "f16", 4, 64, 3, 1, 1, 1, 1, 0, 1],
                               [128, "f16", 4, 64, 3, 0, 1, 1, 0, 1, 1, 0]])
    assert (v6.OVERLAP, v6.PINGPONG, v6.LEAN, v6.PERSISTENT, v6.PARAM_MAPS, v6.STAGED) == \
        (True, True, True, True, False, True)
    assert (v6.PARAM_MAPS_TILES, v6.SPLIT_MAPS, v6.UNIFORM_LENGTHS) == (True, False, True)
    assert (v6.PREFETCH_MAPS, v6.TMA_OUT, v6.LAZY_RESCALE, v6.OVERLAP_TILES) == \
        (True, False, True, False)
    assert v6.BLOCK_N[128] == 64 and v6.STAGES[128] == 3
    _check_variant(ptxs["128-f16-4-64-3-1-1-1-1-0-1"], 128, 64, tmp_path, "main",
                   overlap=True, pingpong=True, staged=True, prefetch=True)
    _check_variant(ptxs["128-f16-4-64-3-0-1-1-0-1-1-0"], 128, 64, tmp_path, "tiles",
                   overlap=False, pingpong=True, param_maps=True, staged=True, prefetch=True)


@pytest.mark.slow
#: each opt-in against its neighbours, both head sizes and dtypes (the defaults: above)
@pytest.mark.parametrize("variant", [[64, "bf16", 1, 64, 2], [128, "bf16", 2, 128, 2],
                                     [128, "f16", 4, 64, 2, 1], [128, "f16", 4, 128, 2, 1, 1],
                                     [64, "bf16", 1, 64, 3, 1, 1, 1, 1],
                                     [128, "f16", 4, 128, 2, 0, 1, 1, 0, 1, 0, 1],
                                     [128, "bf16", 4, 128, 2, 0, 1, 1, 1, 1],
                                     [128, "f16", 4, 128, 2, 0, 1, 1, 1, 0, 1],
                                     [128, "f16", 4, 128, 2, 1, 1, 1, 1, 0, 1],
                                     [64, "bf16", 2, 128, 2, 0, 1, 1, 0, 0, 1, 0, 1],
                                     [128, "f16", 4, 64, 3, 1, 1, 1, 1, 0, 1, 0, 1, 0],
                                     [64, "bf16", 1, 64, 2, 1, 1, 1, 0, 1, 1, 0, 0, 1],
                                     [128, "f16", 4, 64, 3, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0],
                                     [64, "bf16", 2, 64, 2, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1]])
def test_kernel_variants_compile_and_assemble(tmp_path, variant):
    """[D, kind, heads, BN, stages, (overlap, (pingpong, (lean, (persistent,
    (param_maps, (staged, (split_maps, (prefetch_maps, (tma_out, (lazy_rescale))))))))))];
    split_maps, prefetch_maps, tma_out and lazy_rescale the defaults where not given."""
    d, kind, hb, bn, st, *ov = variant
    ptx = _compile(tmp_path, [variant])["-".join(map(str, variant))]
    _check_variant(ptx, d, bn, tmp_path, "v", overlap=bool(ov and ov[0]),
                   pingpong=bool(len(ov) > 1 and ov[1]), param_maps=bool(len(ov) > 4 and ov[4]),
                   staged=bool(len(ov) > 5 and ov[5]),
                   prefetch=bool(ov[7]) if len(ov) > 7 else v6.PREFETCH_MAPS,
                   tma_out=bool(ov[8]) if len(ov) > 8 else None, heads=hb,
                   lazy=bool(ov[9]) if len(ov) > 9 else None)


@pytest.mark.slow
def test_maps_ready_acquires_and_writes_no_map():
    """``maps_ready`` (gpu_v6_check's upper bound for maps written once per pointer set):
    the tile-grid defaults with no map stored, replaced or released, the three acquired
    and prefetched; everything else as the defaults'."""
    got = compile_ptx_of(textwrap.dedent("""
        import json
        from numba import cuda
        from attn_numba.kernels import v6_flash_ws as v6
        sig = v6._signature(False, True)
        print(json.dumps([cuda.compile_ptx(v6.build(128, "f16", 4, persistent=False,
                                                    maps_ready=r).py_func, sig,
                                           cc=(9, 0, "a"), launch_bounds=(v6.THREADS, 1))[0]
                          for r in (False, True)]))
    """))
    plain, ready = got
    for ptx, n in ((plain, 1), (ready, 0)):
        assert ptx.count("st.global.v2.b64") == 24 * n
        assert ptx.count("tensormap.replace.tile.global_address") == 3 * n
        assert ptx.count("fence.proxy.tensormap::generic.release.gpu") == n
        assert ptx.count("fence.proxy.tensormap::generic.acquire.gpu") == 3
        assert ptx.count("prefetch.tensormap") == 3
        assert ptx.count("wgmma.mma_async") == 128 // 16 + 64 // 16


GPU_CASES = [  # seq_q, seq_k, H, Hkv, D, dtype name, window, causal, plan options
    ([1025], [1025], 8, 2, 128, "float16", (128, 128), False, {}),
    ([97, 0, 300], [97, 5, 77], 8, 1, 64, "bfloat16", (-1, -1), True, {}),
    ([513], [1100], 4, 4, 128, "float16", (-1, -1), True, dict(overlap=True, stages=3)),
    ([1], [1], 8, 8, 64, "float16", (0, 0), False, dict(block_n=128)),
    ([97, 0, 300], [97, 5, 77], 8, 2, 128, "float16", (128, 0), True,
     dict(pingpong=False, lean=False)),
    ([1025], [1025], 8, 2, 128, "bfloat16", (128, 128), False,
     dict(overlap=True, pingpong=True, block_n=128)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES)
def test_flash_ws_on_the_gpu_matches_reference(rng, case):
    """The kernel through its plan() and scratch() (one launch; each block writes its own
    maps) on an sm_90 GPU."""
    import math

    from numba import cuda

    from attn_numba import kernels
    from attn_numba.reference import mha_varlen_fwd_ref
    seq_q, seq_k, h, hkv, d, dt, window, causal, kw = case
    if cuda.get_current_device().compute_capability != (9, 0):
        pytest.skip("flash_ws needs sm_90")
    if dt == "bfloat16":
        import ml_dtypes
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(dt)
    cu_q = np.concatenate([[0], np.cumsum(seq_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(seq_k)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], h, d)).astype(dtype)
    k = rng.standard_normal((cu_k[-1], hkv, d)).astype(dtype)
    v = rng.standard_normal((cu_k[-1], hkv, d)).astype(dtype)
    p = _problem(batch=len(seq_q), total_q=int(cu_q[-1]), total_k=int(cu_k[-1]),
                 max_seqlen_q=max(seq_q), max_seqlen_k=max(seq_k), num_heads=h,
                 num_kv_heads=hkv, head_size=d, dtype=dtype, softmax_scale=1 / math.sqrt(d),
                 window_left=window[0], window_right=0 if causal else window[1],
                 causal=causal, lse_batched=False)
    assert v6.supports(p) is None
    arrays = dict(q=cuda.to_device(q.view(np.uint16)), k=cuda.to_device(k.view(np.uint16)),
                  v=cuda.to_device(v.view(np.uint16)),
                  out=cuda.to_device(np.full(q.shape, 0xFFFF, np.uint16)),
                  lse=cuda.to_device(np.full((1, h, p.total_q), np.nan, np.float32)),
                  cu_seqlens_q=cuda.to_device(cu_q), cu_seqlens_k=cuda.to_device(cu_k))
    arrays.update(kernels.scratch_arrays(v6, p, **kw))
    kernels.launch_plans(v6.plan(p, **kw), arrays)
    out = arrays["out"].copy_to_host().view(dtype).astype(np.float64)
    lse = arrays["lse"].copy_to_host()[0]
    ref, ref_lse = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, causal=causal, window_size=window)
    low, _ = mha_varlen_fwd_ref(q, k, v, cu_q, cu_k, causal=causal, window_size=window,
                                p_dtype=dtype)
    floor = 2e-3 if dtype == np.float16 else 1.6e-2
    tol = 2 * np.abs(low.astype(dtype).astype(np.float64) - ref).max(initial=0) + floor
    assert np.isfinite(out).all() and np.abs(out - ref).max(initial=0) <= tol
    ref_lse = np.asarray(ref_lse).reshape(lse.shape)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    fin = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[fin], ref_lse[fin], rtol=1e-4, atol=1e-3)


def test_scratch_holds_every_blocks_maps():
    """One 512-byte slot per block of the grid the plan launches (persistent or not): Q, K,
    V and the boxed epilogue's O map."""
    p = _problem(max_seqlen_q=8192, total_q=8192, total_k=8192, max_seqlen_k=8192,
                 num_heads=32, num_kv_heads=8)
    for kw in (dict(blocks=132), dict(persistent=False), dict(blocks=7)):
        (maps,) = v6.scratch(p, **kw)
        _, grid, *_ = v6.configure(p, **kw)
        assert maps.name == "maps" and np.dtype(maps.dtype).itemsize == 8
        assert maps.shape == (grid[0] * grid[1] * grid[2] * 4 * 128 // 8,)


def test_reuse_plan_is_the_plan_with_the_maps_acquired_only(monkeypatch):
    """``reuse_plan`` (the call path's second call with the same pointers on a reused
    scratch): the same launch as ``plan`` (grid, threads, arrays, scalars, shared memory),
    through the ``maps_ready`` kernel; none where the kernel maps ``out`` too."""
    p = _problem(max_seqlen_q=512, total_q=512, total_k=512, max_seqlen_k=512,
                 num_heads=32, num_kv_heads=8)
    (w,), (r,) = v6.plan(p), v6.reuse_plan(p)
    assert (w.griddim, w.blockdim, w.arrays, w.shared, w.views) == \
        (r.griddim, r.blockdim, r.arrays, r.shared, r.views)
    assert len(w.scalars) == len(r.scalars)
    assert r.kernel is v6.build(128, "f16", 4, persistent=False, maps_ready=True)
    assert w.kernel is not r.kernel
    assert v6.scratch(p) == tuple(kernels.scratch_of(v6, p))
    monkeypatch.setattr(v6, "TMA_OUT", True)
    assert v6.reuse_plan(p) is None


def test_auto_takes_flash_ws_only_with_enough_key_tiles():
    """At the log's shape (32/8 heads, D 128, window (128, 128)) the grid's key tiles grow
    with the tokens; auto takes flash_ws from 2048 tokens non-causal and 4096 causal (the
    H200's crossover against flash_wgmma), never at head size 64 (not timed)."""
    counts, taken = {}, set()
    for causal in (False, True):
        for s in (512, 1024, 2048, 4096, 8192):
            p = _problem(max_seqlen_q=s, total_q=s, total_k=s, max_seqlen_k=s, num_heads=32,
                         num_kv_heads=8, window_left=128, window_right=0 if causal else 128,
                         causal=causal)
            counts[s, causal] = v6.grid_key_tiles(p, 4, 128)
            if v6.auto_declines(p) is None:
                taken.add((s, causal))
            assert v6.auto_declines(dataclasses.replace(p, head_size=64)) is not None
    assert counts[512, False] == 320 and counts[8192, False] == 6080
    assert counts[2048, True] < v6.AUTO_MIN_KEY_TILES < counts[2048, False]
    assert taken == {(2048, False), (4096, False), (8192, False), (4096, True), (8192, True)}
    # the count stops early once past the limit
    p = _problem(max_seqlen_q=131072, total_q=131072, total_k=131072, max_seqlen_k=131072,
                 num_heads=32, num_kv_heads=8, window_left=128, window_right=128)
    assert v6.AUTO_MIN_KEY_TILES < v6.grid_key_tiles(p, 4, 128, limit=v6.AUTO_MIN_KEY_TILES) < 2000


def test_sass_regions_reads_an_ncu_source_export(tmp_path):
    """scripts/sass_regions.py (the SASS profile of notes/v6_flash_ws.md, run 40): opcodes
    without their predicates, totals per kernel, chunks with the per-instruction maximum."""
    import gzip
    import importlib.util
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "sass_regions", os.path.join(root, "scripts", "sass_regions.py"))
    sr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sr)
    text = "\n".join([
        '"Kernel Name","k_one"',
        '"Address","Source","Instructions Executed"',
        '"0x0","      IMAD.WIDE R2, R3, 0x4, R4","1536"',
        '"0x10","  @!P0 BRA 0x0","20000"',
        '"0x20","      @P1 FSEL R5, R6, -INF , P2","1024"',
        '"Kernel Name","k_two"',
        '"Address","Source","Instructions Executed"',
        '"0x0","      EXIT","128"', ""])
    path = tmp_path / "s.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(text)
    ks = sr.kernels_of(path)
    assert list(ks) == ["k_one", "k_two"]
    assert [sr.opcode(r) for r in ks["k_one"]] == ["IMAD", "BRA", "FSEL"]
    out = sr.summary(ks["k_one"], chunk=2)
    assert "total warp-instructions 22,560" in out
    assert "    0     21,536 max/instr  20000" in out and "    2      1,024 max/instr   1024" in out
