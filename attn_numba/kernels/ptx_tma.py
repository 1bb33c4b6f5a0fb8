"""Hopper-only (sm_90a) inline-PTX intrinsics for a warp-specialised kernel: the Tensor Memory
Accelerator (TMA) loads that complete on an ``mbarrier``, the fences around tensor maps and
barriers, register reallocation between warpgroups (``setmaxnreg``) and named barriers.

Declared as :mod:`attn_numba.kernels.ptx_sm90` declares its instructions: each is a
``numba.core.extending.intrinsic`` emitting one ``llvmlite.ir.InlineAsm`` (volatile, with a
memory clobber), registered through :func:`attn_numba.kernels.ptx.fixed_intrinsic` so that a
kernel holding it keeps a reproducible disk-cache key (``tests/test_cache_key.py``).
Compile for ``cc=(9, 0, "a")``; the CUDA simulator runs none of this.

* ``mbarrier_init``, ``mbarrier_arrive``, ``mbarrier_arrive_expect_tx``,
  ``mbarrier_try_wait`` are :mod:`ptx_sm90`'s; :data:`mbarrier_wait` is a loop on
  ``mbarrier.try_wait.parity`` with a suspend-time hint, in one asm block (labels are local
  to its ``{ }`` scope).
* ``tma_load_2d`` / ``tma_load_3d(dst, map, c0, c1[, c2], bar)``:
  ``cp.async.bulk.tensor.{2,3}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes``.
  ``map`` is the generic address (u64) of a 128-byte ``CUtensorMap`` in global memory
  (:mod:`attn_numba.tensormap`), ``c0`` the innermost coordinate, in elements; boxes that
  reach past the tensor are zero-filled and still count their full bytes on ``bar``.
* ``tma_store_3d(map, src, c0, c1, c2)``:
  ``cp.async.bulk.tensor.3d.global.shared::cta.bulk_group``: the box at ``src`` (shared,
  laid out as a load of the same map would leave it) written to the tensor, rows past it
  dropped; ``bulk_commit()`` closes the thread's group of such stores, ``bulk_wait_read()``
  waits until every committed group has read its shared memory (before that memory is
  written again or the block exits).
* ``fence_tensormap_acquire(map)``: ``fence.proxy.tensormap::generic.acquire.gpu [map],
  128`` (once per block before the first TMA through ``map``: the PTX memory model asks for
  it when the map lives in global memory); ``fence_tensormap_release()`` for the writer;
  ``prefetch_tensormap(map)``: ``prefetch.tensormap [map]``.
* ``tensormap_copy(n)(dst, src)``: ``n`` 128-byte maps copied in global memory (a template
  into the call's own slot); ``tensormap_store(first)(dst, words)``: one map written from
  16 words of a tuple (a template passed as kernel parameters);
  ``tensormap_replace_address(map, addr)``: ``tensormap.replace.tile.global_address`` of a
  map in global memory (the per-call data pointer, written on the device).
* ``fence_mbarrier_init()``: ``fence.mbarrier_init.release.cluster`` (after ``mbarrier_init``,
  before the block barrier that publishes the barriers to the async proxy).
* ``fence_proxy_async``: :mod:`ptx_sm90`'s ``fence.proxy.async.shared::cta``.
* ``setmaxnreg_dec(n)`` / ``setmaxnreg_inc(n)``: ``setmaxnreg.{dec,inc}.sync.aligned.u32 n``,
  executed by every thread of a warpgroup; honoured only with ``launch_bounds=(threads, 1)``.
* ``st_shared_u32(addr, word)``, ``ld_shared_v4(addr) -> 4 words``,
  ``st_global_v4(addr, w0, w1, w2, w3)``, ``st_global_v4_if(..., keep)`` (predicated):
  the staged epilogue's stores (16-byte rows of O
  out of shared memory).
* ``bar_sync(id, count)`` / ``bar_arrive(id, count)``: named barriers ``bar.sync`` /
  ``bar.arrive`` (``count`` threads, a multiple of 32; id 0 is ``__syncthreads``'s).
"""
import functools

from llvmlite import ir
from numba import types

from . import ptx_sm90 as _sm90
from .ptx import fixed_intrinsic
from .v6_layout import check_nreg

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VOID = ir.VoidType()

mbarrier_init = _sm90.mbarrier_init
mbarrier_arrive = _sm90.mbarrier_arrive
mbarrier_arrive_expect_tx = _sm90.mbarrier_arrive_expect_tx
mbarrier_try_wait = _sm90.mbarrier_try_wait
fence_proxy_async = _sm90.fence_proxy_async


def _intrinsic(impl, name=None):
    return fixed_intrinsic(impl, f"{__name__}.{name or impl.__name__}")


def _asm(builder, text, constraints, irtys, vals):
    fnty = ir.FunctionType(_VOID, irtys)
    builder.call(ir.InlineAsm(fnty, text, constraints, side_effect=True), vals)


def _stmt(name, text, argtys):
    """A void intrinsic of ``len(argtys)`` arguments (numba types to cast to; u32 -> "r",
    u64 -> "l") emitting ``text``."""
    irtys = [_I64 if t == types.uint64 else _I32 for t in argtys]
    cons = ",".join(["l" if t == types.uint64 else "r" for t in argtys] + ["~{memory}"])

    def build(sig_args):
        if len(sig_args) != len(argtys) or not all(
                isinstance(a, (types.Integer, types.Boolean)) for a in sig_args):
            return None

        def codegen(context, builder, sig, args):
            vals = [context.cast(builder, a, t, w) for a, t, w in zip(args, sig.args, argtys)]
            _asm(builder, text, cons, irtys, vals)
            return context.get_dummy_value()
        return types.void(*sig_args), codegen

    n = len(argtys)
    names = ", ".join(f"a{i}" for i in range(n))
    src = (f"def {name}(typingctx{', ' if n else ''}{names}):\n"
           f"    return build(({names}{',' if n == 1 else ''}))\n")
    scope = {"build": build}
    exec(src, scope)  # noqa: S102 - a fixed, generated signature; no user input
    return _intrinsic(scope[name])


_U32, _U64 = types.uint32, types.uint64

#: the suspend-time hint of :data:`mbarrier_wait`'s ``try_wait`` (nanoseconds; CUTLASS's
#: ``ClusterBarrier::wait`` value): a waiting thread sleeps until the phase completes or the
#: hint runs out, instead of retrying after the hardware's default time limit
SUSPEND_NS = 0x989680
#: mbarrier_wait(bar, parity): wait until the phase of parity ``parity`` has completed
mbarrier_wait = _stmt(
    "mbarrier_wait",
    "{ .reg .pred P; WAIT_LOOP: mbarrier.try_wait.parity.shared::cta.b64 P, [$0], $1, "
    f"{SUSPEND_NS:#x}; @!P bra WAIT_LOOP; }}", (_U32, _U32))


def mbarrier_wait_bounded(typingctx, bar, parity, limit):
    """``mbarrier_wait_bounded(bar, parity, limit) -> u32``: 1 once the phase of parity
    ``parity`` has completed, 0 after ``limit`` unsuccessful ``try_wait`` attempts (each
    waits a hardware-chosen while): for debug builds that report a hang instead of hanging."""
    if not all(isinstance(a, types.Integer) for a in (bar, parity, limit)):
        return None

    def codegen(context, builder, sig, args):
        vals = [context.cast(builder, a, t, types.uint32) for a, t in zip(args, sig.args)]
        fnty = ir.FunctionType(_I32, [_I32, _I32, _I32])
        text = ("{ .reg .pred P; .reg .u32 n; mov.u32 n, 0; "
                "BWAIT: mbarrier.try_wait.parity.shared::cta.b64 P, [$1], $2; @P bra BDONE; "
                "add.u32 n, n, 1; setp.lt.u32 P, n, $3; @P bra BWAIT; "
                "BDONE: selp.u32 $0, 1, 0, P; }")
        # P at BDONE: true from the try_wait, false when the count ran out
        return builder.call(ir.InlineAsm(fnty, text, "=r,r,r,r,~{memory}",
                                         side_effect=True), vals)
    return types.uint32(bar, parity, limit), codegen


mbarrier_wait_bounded = _intrinsic(mbarrier_wait_bounded)
#: fence_mbarrier_init(): make mbarrier.init visible (to the async proxy / the cluster)
fence_mbarrier_init = _stmt("fence_mbarrier_init", "fence.mbarrier_init.release.cluster;", ())
#: tma_load_2d(dst smem u32, map u64, c0, c1, bar smem u32)
tma_load_2d = _stmt(
    "tma_load_2d",
    "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
    "[$0], [$1, {$2, $3}], [$4];", (_U32, _U64, _U32, _U32, _U32))
#: tma_load_3d(dst smem u32, map u64, c0, c1, c2, bar smem u32)
tma_load_3d = _stmt(
    "tma_load_3d",
    "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
    "[$0], [$1, {$2, $3, $4}], [$5];", (_U32, _U64, _U32, _U32, _U32, _U32))
#: tma_store_3d(map u64, src smem u32, c0, c1, c2): one box from shared memory to the tensor
tma_store_3d = _stmt(
    "tma_store_3d",
    "cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [$0, {$2, $3, $4}], [$1];",
    (_U64, _U32, _U32, _U32, _U32))
#: bulk_commit(): the thread's bulk stores issued so far form one group
bulk_commit = _stmt("bulk_commit", "cp.async.bulk.commit_group;", ())
#: bulk_wait_read(): every committed group has finished reading its shared memory
bulk_wait_read = _stmt("bulk_wait_read", "cp.async.bulk.wait_group.read 0;", ())
#: fence_tensormap_acquire(map u64): before the first use of a map in global memory
fence_tensormap_acquire = _stmt(
    "fence_tensormap_acquire", "fence.proxy.tensormap::generic.acquire.gpu [$0], 128;", (_U64,))
#: prefetch_tensormap(map u64): fetch a map (generic address) into the TMA unit's descriptor
#: cache ahead of its first TMA (after its acquire: the acquire invalidates the cached copy)
prefetch_tensormap = _stmt("prefetch_tensormap", "prefetch.tensormap [$0];", (_U64,))
#: fence_tensormap_release(): after writing maps that another grid will use
fence_tensormap_release = _stmt(
    "fence_tensormap_release", "fence.proxy.tensormap::generic.release.gpu;", ())
#: tensormap_replace_address(map u64, addr u64): the map's global address field
tensormap_replace_address = _stmt(
    "tensormap_replace_address",
    "tensormap.replace.tile.global_address.global.b1024.b64 [$0], $1;", (_U64, _U64))


@functools.lru_cache(maxsize=None)
def tensormap_copy(n):
    """``tensormap_copy(n)(dst u64, src u64)``: ``n`` consecutive 128-byte maps copied in
    global memory by this thread, every load issued before the first store (one memory
    round trip; ``16 n`` 64-bit registers, so call it with registers to spare: before
    a ``setmaxnreg.dec``). For a template copied into a call's own slot, before
    ``tensormap_replace_address`` and the release fence."""
    if not 1 <= int(n) <= 4:
        raise ValueError(f"tensormap_copy: 1 to 4 maps, got {n}")
    m = 8 * int(n)
    text = ("{ .reg .b64 t<%d>; " % (2 * m)
            + " ".join(f"ld.global.v2.b64 {{t{2 * i}, t{2 * i + 1}}}, [$1+{16 * i}];"
                       for i in range(m)) + " "
            + " ".join(f"st.global.v2.b64 [$0+{16 * i}], {{t{2 * i}, t{2 * i + 1}}};"
                       for i in range(m)) + " }")
    return _stmt(f"tensormap_copy_{n}", text, (_U64, _U64))


@functools.lru_cache(maxsize=None)
def tensormap_store(first):
    """``tensormap_store(first)(dst u64, words)``: one 128-byte map written to ``dst`` in
    global memory from ``words[first:first + 16]`` of a tuple of 64-bit integers (a
    template's words passed as kernel parameters: no load), eight 16-byte stores."""
    first = int(first)

    def store(typingctx, dst, words):
        if not (isinstance(dst, types.Integer) and isinstance(words, types.UniTuple)
                and isinstance(words.dtype, types.Integer) and words.dtype.bitwidth == 64
                and words.count >= first + 16):
            return None

        def codegen(context, builder, sig, args):
            d = context.cast(builder, args[0], sig.args[0], types.uint64)
            vals = [builder.extract_value(args[1], first + i) for i in range(16)]
            text = " ".join(f"st.global.v2.b64 [$0+{16 * i}], {{${2 * i + 1}, ${2 * i + 2}}};"
                            for i in range(8))
            _asm(builder, text, ",".join(["l"] * 17 + ["~{memory}"]), [_I64] * 17, [d, *vals])
            return context.get_dummy_value()
        return types.void(dst, words), codegen

    store.__name__ = f"tensormap_store_{first}"
    return _intrinsic(store, f"tensormap_store_{first}")


#: st_shared_u32(addr, word): one 32-bit store at a shared-state-space address
st_shared_u32 = _stmt("st_shared_u32", "st.shared.u32 [$0], $1;", (_U32, _U32))
#: st_global_v4(addr u64, w0, w1, w2, w3): one 16-byte store (``addr`` 16-byte aligned)
st_global_v4 = _stmt("st_global_v4", "st.global.v4.b32 [$0], {$1, $2, $3, $4};",
                     (_U64, _U32, _U32, _U32, _U32))
#: st_global_v4_if(addr u64, w0, w1, w2, w3, keep u32): the same store, predicated on
#: ``keep != 0`` (no branch around it)
st_global_v4_if = _stmt(
    "st_global_v4_if",
    "{ .reg .pred p; setp.ne.u32 p, $5, 0; @p st.global.v4.b32 [$0], {$1, $2, $3, $4}; }",
    (_U64, _U32, _U32, _U32, _U32, _U32))


def ld_shared_v4(typingctx, addr):
    """``ld_shared_v4(addr) -> (w0, w1, w2, w3)``: one 16-byte load at a 16-byte aligned
    shared-state-space address (volatile: kept after the named barrier that publishes the
    data)."""
    if not isinstance(addr, types.Integer):
        return None
    ret = types.UniTuple(types.uint32, 4)

    def codegen(context, builder, sig, args):
        a = context.cast(builder, args[0], sig.args[0], types.uint32)
        struct = ir.LiteralStructType([_I32] * 4)
        fnty = ir.FunctionType(struct, [_I32])
        res = builder.call(ir.InlineAsm(fnty, "ld.shared.v4.b32 {$0, $1, $2, $3}, [$4];",
                                        "=r,=r,=r,=r,r,~{memory}", side_effect=True), [a])
        return context.make_tuple(builder, sig.return_type,
                                  [builder.extract_value(res, i) for i in range(4)])
    return ret(addr), codegen


ld_shared_v4 = _intrinsic(ld_shared_v4)

#: bar_sync(id, count) / bar_arrive(id, count): named barriers
bar_sync = _stmt("bar_sync", "bar.sync $0, $1;", (_U32, _U32))
bar_arrive = _stmt("bar_arrive", "bar.arrive $0, $1;", (_U32, _U32))
#: bar_sync_data(id, count): a named barrier that publishes shared-memory data between the
#: threads it joins (on the device ``bar.sync``; the simulator's model is a block barrier)
bar_sync_data = bar_sync


@functools.lru_cache(maxsize=None)
def setmaxnreg_dec(n):
    """``setmaxnreg.dec.sync.aligned.u32 n`` (n: multiple of 8 in 24..256)."""
    check_nreg(n)
    return _stmt(f"setmaxnreg_dec_{n}", f"setmaxnreg.dec.sync.aligned.u32 {n};", ())


@functools.lru_cache(maxsize=None)
def setmaxnreg_inc(n):
    """``setmaxnreg.inc.sync.aligned.u32 n`` (n: multiple of 8 in 24..256)."""
    check_nreg(n)
    return _stmt(f"setmaxnreg_inc_{n}", f"setmaxnreg.inc.sync.aligned.u32 {n};", ())


# --------------------------------------------------------------------------- simulator
# Under Numba's CUDA simulator these names are pure-Python models (v6_ptx_sim), so tests can
# run flash_ws's whole kernel on the CPU.
from numba import config as _config  # noqa: E402

if _config.ENABLE_CUDASIM:
    from .v6_ptx_sim import (bar_arrive, bar_sync, bar_sync_data, fence_mbarrier_init,  # noqa: E402,F401,F811
                             fence_proxy_async, fence_tensormap_acquire,
                             fence_tensormap_release, mbarrier_arrive, prefetch_tensormap,
                             mbarrier_arrive_expect_tx, mbarrier_init, mbarrier_try_wait,
                             ld_shared_v4, st_global_v4, st_global_v4_if, st_shared_u32,
                             mbarrier_wait, mbarrier_wait_bounded, setmaxnreg_dec, setmaxnreg_inc,
                             tma_load_2d, tma_load_3d, tensormap_copy, tensormap_store,
                             tensormap_replace_address, tma_store_3d, bulk_commit,
                             bulk_wait_read)
