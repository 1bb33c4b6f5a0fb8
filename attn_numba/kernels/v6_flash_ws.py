"""v6: warp-specialised flash attention for Hopper (sm_90a): TMA loads on an mbarrier pipeline,
one producer warpgroup and two consumer warpgroups per block, after FlashAttention-3's
structure, in Numba (inline PTX: :mod:`attn_numba.kernels.ptx_tma`, ``ptx_sm90``).

A block has 384 threads (``launch_bounds=(384, 1)``) and 128 query rows: (position, head)
pairs of one GQA group, 64 per consumer warpgroup, packed as flash_wgmma packs them
(:mod:`attn_numba.kernels.v6_layout`).

* Warpgroup 0, the producer, gives registers back (``setmaxnreg.dec`` to 24); one of its
  threads issues every load: a work tile's two Q tiles, then the K and V tiles of its key
  band into ``S`` >= 2 stages, each stage guarded by full barriers (K and V apart, so QK^T
  can start before V has landed) and empty barriers the consumers arrive on.
* Warpgroups 1 and 2, the consumers (``setmaxnreg.inc`` to 240), share every K/V tile: per
  tile S = Q K^T (wgmma, both operands in shared memory), the online softmax on the
  fragments (the element mask only on the band's partial tiles: ``tile_range``; lazy: O
  rescaled only where a row's maximum moved by more than 2^8), O += P V (P from
  registers), then release the stage; on the persistent grid QK^T of the next tile runs
  during this one's softmax (FlashAttention-3's order), and the epilogue writes O through
  shared memory in 16-byte stores (``v6_epilogue``), lse from registers.
  With ``pingpong`` they take turns issuing wgmma (named barriers, ``v6_roles``).
* The grid: one block per work tile, or (``persistent``, the default) one block per SM that
  takes work tiles in turn, so that the next tile's Q and K/V loads run under this one's
  epilogue (a Q-empty barrier; the K/V ring runs on across work tiles).
* Loads are TMA boxes through ``CUtensorMap``s in global memory (:mod:`attn_numba.tensormap`):
  each block's producer copies the specialisation's template maps into its own slot of the
  call's ``maps`` scratch (on the one-block-per-tile grid from kernel parameters), writes
  the call's q, k, v addresses there (``tensormap.replace``), releases and acquires them
  (``fence.proxy.tensormap``), all before its first TMA: one launch per call, and no map
  shared between calls. The 128B-swizzled boxes land in the tile layout of ``wgmma_layout``.
  A batched call passes its sequences' lengths, so that no block reads ``cu_seqlens``.
  With ``ATTN_NUMBA_SCRATCH_REUSE=1``, a call whose q, k, v and scratch are those of the last
  call on its stream acquires the maps already there and writes none (:func:`reuse_plan`).

Semantics as every kernel: GQA, windows (bottom-right), causal, varlen, lse; rows without a
key give 0 and -inf. Not runnable on the simulator; PTX checked with ``compile_ptx(...,
cc=(9, 0, "a"))`` and ptxas. Notes: notes/v6_flash_ws.md.
"""
import math

import numpy as np
from numba import config as numba_config
from numba import cuda

from . import v6_layout as lay
from .common import supports_hopper
from .config import heads_per_block
from .occupancy import opt_in_shared
from .v5_flash_wgmma import kind_of
# the kernel body, its threads, head sizes, shared-memory limit and signature
from .v6_kernel import HEAD_SIZES, MAX_SHARED, THREADS, _build, maps_per_block
from .v6_kernel import signature as _signature

NAME = "flash_ws"
#: q, k, v and out must be 16-byte aligned (TMA boxes; the staged epilogue stores 16
#: bytes): the call path refuses others
POINTER_ALIGN = 16

#: keys per tile and K/V stages, per head size: with the overlapped loop and the staged
#: epilogue, 64 keys in 3 stages at D = 128 are faster than 128 in 2 at all 10 of the log's
#: configurations (run 49: 4-8% from 2048 tokens up; before them, 128 had won, run 33); 2,
#: 3 and 4 stages of 64 keys were within 1% of each other (run 50); D = 64 untimed
BLOCK_N = {64: 64, 128: 64}
STAGES = {64: 2, 128: 3}
#: the key tile ``auto_declines`` counts in (its threshold was measured in 128-key tiles)
AUTO_BLOCK_N = 128
#: consumer loop with FlashAttention-3's intra-warpgroup overlap, in its order (QK^T of tile
#: j issued, O rescaled under it, then PV of tile j-1): with the staged epilogue 1-4% faster
#: than the plain loop from 1024 tokens up (run 48, notes/v6_flash_ws.md)
OVERLAP = True
#: the same on the one-block-per-tile grid (one work tile per block: 512 tokens of the log's
#: shape), where the plain loop is 2-3% faster (run 62: 0.0104 against 0.0106-0.0107 ms
#: non-causal, 0.0086-0.0087 against 0.0088-0.0089 causal, three rounds each), so off
OVERLAP_TILES = False
#: the two consumer warpgroups take turns at the tensor cores (named barriers,
#: v6_roles._scheduler): 3-6% faster on the H200 (runs 29-31, notes/v6_flash_ws.md)
PINGPONG = True
#: the lean softmax: the scale folded into the exponent's fma (one multiply less per score),
#: keep-mask masking, descriptors stepped by constants (v5_steps.steps): 4% faster (run 30)
LEAN = True
#: one block per SM taking work tiles in turn (next tile's loads under this one's epilogue):
#: with 128-key tiles 13-16% faster from 2048 tokens up (run 33, notes/v6_flash_ws.md); used
#: when there are more work tiles than SMs (configure)
PERSISTENT = True
#: the template maps' 48 words as kernel parameters, each block's maps set up first thing
#: (no load of the template, before the work tile's loads), on the persistent grid: 0.3-0.7
#: us slower at 1024-2048 tokens (run 44, notes/v6_flash_ws.md), so off
PARAM_MAPS = False
#: the same on the one-block-per-tile grid: 0.4-0.6 us faster at 512 tokens (runs 44, 53)
PARAM_MAPS_TILES = True
#: the tile grid's maps written and released by a second producer thread (thread 32) while
#: thread 0 loads the work tile (opt-in ``split_maps``): 0.2 us slower at 512 tokens than
#: thread 0 writing them itself (run 53, notes/v6_flash_ws.md), so off
SPLIT_MAPS = False
#: batched calls pass their sequences' lengths (``uniform_lengths``), so that no block loads
#: ``cu_seqlens`` (a runtime scalar: the same kernels serve varlen calls): equal at 512
#: tokens, up to 1% faster from 1024 up (run 53)
UNIFORM_LENGTHS = True
#: each block's maps fetched into the TMA unit's descriptor cache right after their acquire
#: (``prefetch.tensormap``; the acquire is an invalidate, UTMACCTL.IV in SASS, so the first
#: TMA would fetch the map): 0.1-0.2 us faster at 512 tokens, within 1% elsewhere (run 58)
PREFETCH_MAPS = True
#: the epilogue through shared memory, 16-byte stores (v6_epilogue.staged): 3-15% faster
#: than per-thread stores at 8 of the log's 10 configurations, equal at the other two (run 48)
STAGED = True
#: with the staged epilogue, a tile whose positions all lie inside its sequence leaves by
#: TMA stores (one thread, ``HB * D / 64`` boxes, through an O map each block writes beside
#: its Q, K, V maps), the others in 16-byte chunks (v6_epilogue.boxed): built after run 58
#: (whose SASS put 383 K of the 512-token call's 3.27 M warp instructions in the copy-out);
#: 4-8% slower at 512-1024 tokens and 1-3% from 2048 up (run 59: the storing thread waits
#: for the TMA to read the tile before its warpgroup goes on), so off
TMA_OUT = False
#: the lazy softmax (``lazy_rescale``): a row's running maximum moves only by more than
#: ``softmax.LAZY_THRESHOLD`` (2^8), and a warp whose rows all kept theirs skips O's rescale
#: (a warp vote): at or under the eager softmax at all 10 of the log's configurations, 1-3%
#: faster from 1024 tokens up (run 60, notes/v6_flash_ws.md)
LAZY_RESCALE = True
#: ``auto`` takes flash_ws over flash_wgmma above this many key tiles in the grid (128-key
#: tiles at D = 128; the log's shape: 704 at 1024 tokens, 1472 at 2048, causal 480 / 992)
AUTO_MIN_KEY_TILES = 1200


def _staged_fits(head_size, block_n, stages):
    """The default epilogue: ``STAGED`` where its O tiles fit beside the stages asked for
    (aligned for the boxed epilogue)."""
    return STAGED and lay.shared_bytes(head_size, block_n, stages, True, True) <= MAX_SHARED


def map_mode(persistent, param_maps=None, split_maps=None):
    """(param_maps, split_maps) of a kernel on the ``persistent`` grid or not: the module's
    defaults per grid where None; ``split_maps`` only with ``param_maps`` on the
    one-block-per-tile grid."""
    pm = (PARAM_MAPS if persistent else PARAM_MAPS_TILES) if param_maps is None \
        else bool(param_maps)
    split = pm and not persistent and (SPLIT_MAPS if split_maps is None else bool(split_maps))
    return pm, split


def loop_mode(persistent, overlap=None):
    """The consumer loop of a kernel on the ``persistent`` grid or not (``overlap``: the
    overlapped loop; None = ``OVERLAP`` or ``OVERLAP_TILES`` per grid)."""
    if overlap is not None:
        return bool(overlap)
    return OVERLAP if persistent else OVERLAP_TILES


def _tma_out(staged, tma_out):
    """The boxed epilogue: ``TMA_OUT`` where None, and only with the staged one."""
    return bool(staged) and (TMA_OUT if tma_out is None else bool(tma_out))


def build(head_size, kind="f16", heads=4, block_n=None, stages=None, overlap=None,
          debug_waits=False, pingpong=None, lean=None, persistent=None, param_maps=None,
          staged=None, split_maps=None, prefetch_maps=None, tma_out=None, lazy_rescale=None,
          maps_ready=False):
    """The kernel for ``head_size``, ``kind`` ('f16'/'bf16'), ``heads`` query heads per tile
    (4, 2 or 1 of a GQA group), key tile ``block_n``, ``stages``, the consumer loop
    ``overlap`` (:func:`loop_mode`), the consumers' turns ``pingpong``, the ``lean`` softmax, the
    ``persistent`` grid, the template maps as kernel parameters ``param_maps``, written by a
    second producer thread ``split_maps`` (:func:`map_mode`), prefetched ``prefetch_maps``,
    the ``staged`` epilogue, its whole tiles by TMA stores ``tma_out``, and the lazy softmax
    ``lazy_rescale`` (None = the module defaults; the staged epilogue only where its O
    tiles fit);
    ``debug_waits``: bounded waits that print the one that timed out
    (v6_roles.roles), for diagnosing a hang; ``maps_ready``: the blocks acquire the maps
    an earlier call with the same problem, pointers and scratch left in their slots and
    write none (:func:`reuse_plan`; wrong for any other call)."""
    bn = BLOCK_N[head_size] if block_n is None else block_n
    st = STAGES[head_size] if stages is None else stages
    if staged is None:
        staged = _staged_fits(head_size, bn, st)
    pers = PERSISTENT if persistent is None else bool(persistent)
    pm, split = map_mode(pers, param_maps, split_maps)
    return _build(head_size, kind, heads, bn, st,
                  loop_mode(pers, overlap), bool(debug_waits),
                  PINGPONG if pingpong is None else bool(pingpong),
                  LEAN if lean is None else bool(lean), pers, pm, bool(staged), split,
                  PREFETCH_MAPS if prefetch_maps is None else bool(prefetch_maps),
                  _tma_out(staged, tma_out),
                  LAZY_RESCALE if lazy_rescale is None else bool(lazy_rescale),
                  bool(maps_ready))


# --------------------------------------------------------------------------- module contract

def compile_targets(head_size, dtype, heads=(4,)):
    """``[(label, kernel, signature)]`` for ``compile_ptx(..., cc=(9, 0, "a"))``: per
    ``heads``, the persistent kernel and the one-block-per-tile kernel (configure picks)."""
    kind = kind_of(dtype)
    if kind is None or head_size not in HEAD_SIZES:
        return []
    return [(f"flash_ws_kernel_{kind}_d{head_size}_h{hb}{'' if pers else '_tiles'}",
             build(head_size, kind, hb, persistent=pers), _signature(pers, map_mode(pers)[0]))
            for hb in heads for pers in (True, False)]


def supports(problem):
    """Why this kernel cannot run ``problem`` (None when it can)."""
    return supports_hopper(problem, NAME, HEAD_SIZES, "TMA, wgmma")


def grid_key_tiles(problem, heads, block_n, limit=None):
    """Key tiles the grid's work tiles load, counted with every sequence at the longest
    length (an upper bound for varlen); the count stops once past ``limit``."""
    from .tile_range import key_tiles_host
    rows = lay.CONSUMERS * lay.positions_per_tile(heads)
    sq, sk = problem.max_seqlen_q, problem.max_seqlen_k
    per_x = (problem.num_heads // heads) * problem.batch
    n = 0
    for row0 in range(0, sq, rows):
        lo, hi = key_tiles_host(row0, min(row0 + rows, sq) - 1, sq, sk, problem.window_left,
                                problem.window_right, block_n)
        n += max(hi - lo, 0) // block_n * per_x
        if limit is not None and n > limit:
            break
    return n


def auto_declines(problem):
    """Why ``kernel="auto"`` takes the next kernel (flash_wgmma) for ``problem`` although
    this one can run it (None: auto takes this one). flash_ws's fixed costs per block (its
    maps, barriers, the producer's start) pay off only once each SM has several key tiles
    to stream: at most ``AUTO_MIN_KEY_TILES`` in the grid, flash_wgmma was as fast or
    faster on the H200 (notes/v6_flash_ws.md). Head size 64 was never timed against it."""
    if problem.head_size != 128:
        return "flash_ws is timed only at head size 128"
    hb = heads_per_block(problem.group_size)
    n = grid_key_tiles(problem, hb, AUTO_BLOCK_N, AUTO_MIN_KEY_TILES)
    if n <= AUTO_MIN_KEY_TILES:
        return f"{n} key tiles: flash_wgmma is as fast up to {AUTO_MIN_KEY_TILES}"
    return None


def configure(problem, heads=None, block_n=None, stages=None, overlap=None,
              debug_waits=False, pingpong=None, lean=None, persistent=None, blocks=None,
              param_maps=None, staged=None, split_maps=None, prefetch_maps=None, tma_out=None,
              lazy_rescale=None, maps_ready=False):
    """(kernel, grid, dynamic shared bytes, heads, block_n, extra scalars) for ``problem``.
    ``persistent``: a grid of ``blocks`` (default: the device's SMs, at most the work
    tiles) taking the work tiles in turn, extra scalars ``(nx, ny, n_work)``; None (the
    default): persistent when there are more work tiles than ``blocks``, else one block per
    tile (with one tile per block the persistent kernel's ring bookkeeping only costs: 6-8%
    slower at 512 tokens on the H200, run 36)."""
    hb = heads_per_block(problem.group_size) if heads is None else heads
    d = problem.head_size
    bn = BLOCK_N[d] if block_n is None else block_n
    st = STAGES[d] if stages is None else stages
    rows = lay.CONSUMERS * lay.positions_per_tile(hb)
    grid = ((max(problem.max_seqlen_q, 1) + rows - 1) // rows, problem.num_heads // hb,
            problem.batch)
    n_work = grid[0] * grid[1] * grid[2]
    if blocks is None:   # the simulator's device has no SM count: a block per tile
        blocks = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", n_work)
    # the persistent grid only pays with more work tiles than blocks
    pers = (PERSISTENT and n_work > blocks) if persistent is None else bool(persistent)
    stg = _staged_fits(d, bn, st) if staged is None else bool(staged)
    tma = _tma_out(stg, tma_out)
    need = lay.shared_bytes(d, bn, st, stg, tma)
    if need > MAX_SHARED:
        raise ValueError(f"flash_ws: block_n={bn}, stages={st}{', staged' if stg else ''} "
                         f"need {need} bytes of shared memory "
                         f"at head size {d}, more than {MAX_SHARED}")
    kernel = build(d, kind_of(problem.dtype), hb, bn, st, overlap, debug_waits, pingpong,
                   lean, pers, param_maps, stg, split_maps, prefetch_maps, tma, lazy_rescale,
                   maps_ready)
    extra = ()
    if pers:
        extra = (np.int32(grid[0]), np.int32(grid[1]), np.int32(n_work))
        grid = (max(min(int(blocks), n_work), 1), 1, 1)
    return kernel, grid, need, hb, bn, extra


def map_specs(problem, heads, block_n):
    """The TiledSpecs of the Q, K and V maps (boxes: PB positions of one head; BN keys)."""
    from ..tensormap import tiled_spec
    kind = kind_of(problem.dtype)
    d = problem.head_size
    return (tiled_spec(kind, (problem.total_q, problem.num_heads, d),
                       lay.positions_per_tile(heads)),
            tiled_spec(kind, (problem.total_k, problem.num_kv_heads, d), block_n),
            tiled_spec(kind, (problem.total_k, problem.num_kv_heads, d), block_n))


def uniform_lengths(problem):
    """(queries, keys) of every sequence when a batched call has them all equal, else (-1,
    -1): the kernel then reads no ``cu_seqlens`` (whose load was on the block's path to its
    first TMA). A batched call (``lse_batched``) has ``cu_seqlens = arange(batch + 1) *
    seqlen`` (``Problem``); its totals are checked too, so that a padded varlen layout is
    never taken for one."""
    p = problem
    if (p.lse_batched and p.total_q == p.batch * p.max_seqlen_q
            and p.total_k == p.batch * p.max_seqlen_k):
        return p.max_seqlen_q, p.max_seqlen_k
    return -1, -1


def _scalars(problem, uniform=None):
    use = UNIFORM_LENGTHS if uniform is None else bool(uniform)
    uq, uk = uniform_lengths(problem) if use else (-1, -1)
    return (np.float32(problem.softmax_scale * math.log2(math.e)),
            np.int32(problem.window_left), np.int32(problem.window_right),
            bool(problem.lse_batched), np.int32(uq), np.int32(uk))


def template(problem, heads, block_n, words=False):
    """The specialisation's template Q, K and V maps (placeholder data addresses; made once
    per device and specs, :func:`attn_numba.tensormap.template_maps`; on the simulator,
    model maps): their address (np.int64), or with ``words`` their 48 words (a tuple of
    np.int64, the kernel parameters of ``param_maps``)."""
    specs = map_specs(problem, heads, block_n)
    if numba_config.ENABLE_CUDASIM:
        from .v6_ptx_sim import model_maps, model_words
        return model_words(specs) if words else np.int64(model_maps(specs))
    from .. import tensormap
    dev = cuda.get_current_device().id
    got = tensormap.template_maps(specs, (NAME, dev, specs))
    return got.words if words else np.int64(got.address)


def scratch(problem, **kw):
    """The call's own maps: 512 bytes per block of the grid (Q, K, V and, with ``tma_out``,
    O; ``maps``, int64), written by each block from the template before its first TMA, so that
    calls on any streams never share a map. Keywords as in :func:`plan`."""
    from . import Scratch
    kw.pop("uniform_lengths", None)
    _, grid, *_ = configure(problem, **kw)
    n = maps_per_block(True)   # room for an O map whether the kernel writes one or not
    return (Scratch("maps", (grid[0] * grid[1] * grid[2] * n * 16,), np.int64),)


def plan(problem, **kw):
    """One launch: every block copies the template maps into its slot of the ``maps``
    scratch (:func:`scratch`), writes the call's q, k, v addresses there
    (``tensormap.replace``) and loads through them. Keyword overrides (``heads``,
    ``block_n``, ``stages``, ``overlap``, ``pingpong``, ``lean``, ``persistent``,
    ``param_maps``, ``split_maps``, ``prefetch_maps``, ``staged``, ``tma_out``,
    ``lazy_rescale``, ``blocks``, ``debug_waits``, ``maps_ready``) as in
    :func:`build` and :func:`configure`, and ``uniform_lengths`` (a batched call's lengths
    passed: :func:`uniform_lengths`; None = ``UNIFORM_LENGTHS``); :func:`scratch` takes the
    same."""
    from . import FWD_ARRAYS, Plan
    ul = kw.pop("uniform_lengths", None)
    kernel, grid, shared, hb, bn, extra = configure(problem, **kw)
    pm, _ = map_mode(bool(extra), kw.get("param_maps"), kw.get("split_maps"))
    tmpl = template(problem, hb, bn, words=pm)
    opt_in_shared(kernel, _signature(bool(extra), pm), shared)
    views = (np.uint16, np.uint16, np.uint16, np.uint32)
    return (Plan(kernel, grid, THREADS, views,
                 _scalars(problem, ul) + (tmpl,) + extra, shared,
                 arrays=FWD_ARRAYS + ("maps",)),)


def reuse_plan(problem):
    """The plan of a call whose ``maps`` scratch already holds the maps of its q, k and v:
    the last :func:`plan` launch on that scratch had the same problem and pointers (the
    call path keeps that record: ``callpath._launch``, :mod:`attn_numba.scratch_reuse`,
    opt-in). Its blocks acquire and
    prefetch their slot's maps and write none (``maps_ready``): one store burst and a
    ``MEMBAR.GPU`` round trip less before the first TMA. None where the kernel also maps
    ``out`` (``tma_out``), whose pointer changes between calls."""
    if _tma_out(_staged_fits(problem.head_size, BLOCK_N[problem.head_size],
                             STAGES[problem.head_size]), None):
        return None
    return plan(problem, maps_ready=True)
