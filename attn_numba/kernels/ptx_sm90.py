"""Hopper-only (sm_90a) inline-PTX intrinsics for Numba kernels: warpgroup MMA (``wgmma``),
its fences and groups, matrix descriptors, ``mbarrier``, ``cp.async`` and the proxy fence.

Each function is a ``numba.core.extending.intrinsic`` whose code generator emits one
``llvmlite.ir.InlineAsm`` call, so the instruction appears verbatim in the PTX and the
kernels that call it still compile with ``cuda.jit(cache=True)`` (no foreign code to link).
The PTX must be compiled for ``sm_90a`` (``compile_ptx(..., cc=(9, 0, "a"))``; numba-cuda
appends the ``a`` by itself on a Hopper device). The CUDA simulator cannot run any of this.

Accumulators of ``wgmma`` live in a ``cuda.local.array(N // 2, float32)``: the intrinsic
loads every element with a constant index, runs the instruction with the values tied to its
outputs and stores them back, so after unrolling LLVM keeps them in registers. Because
``wgmma.mma_async`` writes its accumulators asynchronously, they must not be read before
``wgmma_wait(n)``; :func:`fence_acc` passes every element through an empty volatile asm
so that no read is moved above the wait (the role of CUTLASS's ``warpgroup_fence_operand``).

Matrix descriptors (PTX ISA, "Matrix Descriptor Format"; field helpers in
:mod:`attn_numba.kernels.wgmma_layout`) are plain uint64 values built with integer ops.
"""
import functools

from llvmlite import ir
from numba import cuda as _cuda
from numba import types

from . import ptx
from .ptx import fixed_intrinsic

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_VOID = ir.VoidType()


def cuda_device_function(fn):
    return _cuda.jit(device=True, inline=True, cache=True)(fn)


def _intrinsic(impl, name=None):
    """``intrinsic(impl)`` with a fixed identity (see :func:`ptx.fixed_intrinsic`)."""
    return fixed_intrinsic(impl, f"{__name__}.{name or impl.__name__}")


def _asm(builder, ret, argtys, text, constraints, args):
    fnty = ir.FunctionType(ret, argtys)
    return builder.call(ir.InlineAsm(fnty, text, constraints, side_effect=True), args)


# --------------------------------------------------------------------------- simple statements

def _void_stmt(text, name):
    """An intrinsic of no arguments that emits ``text`` (with a memory clobber)."""
    def impl(typingctx):
        def codegen(context, builder, sig, args):
            _asm(builder, _VOID, [], text, "~{memory}", [])
            return context.get_dummy_value()
        return types.void(), codegen
    impl.__name__ = name
    return _intrinsic(impl)


#: ``wgmma.fence.sync.aligned``: orders register/shared accesses before the next wgmma
wgmma_fence = _void_stmt("wgmma.fence.sync.aligned;", "wgmma_fence")
#: ``wgmma.commit_group.sync.aligned``: closes a group of issued wgmma instructions
wgmma_commit = _void_stmt("wgmma.commit_group.sync.aligned;", "wgmma_commit")
#: ``fence.proxy.async.shared::cta``: generic-proxy shared-memory writes (st.shared,
#: cp.async) become visible to the async proxy (wgmma operands, TMA)
fence_proxy_async = _void_stmt("fence.proxy.async.shared::cta;", "fence_proxy_async")


@functools.lru_cache(maxsize=None)
def wgmma_wait(n):
    """Intrinsic ``wgmma.wait_group.sync.aligned n``: at most ``n`` wgmma groups pending."""
    return _void_stmt(f"wgmma.wait_group.sync.aligned {int(n)};", f"wgmma_wait_{n}")


# --------------------------------------------------------------------------- from ptx.py
# Instructions that are not Hopper-only come from attn_numba.kernels.ptx, under the names
# this module's kernels use.
smem_addr = ptx.smem_u32          # 32-bit shared address of element 0 of a shared array
data_ptr = ptx.gaddr              # 64-bit address of an array's data
cp_async_16 = ptx.cp_async16      # cp.async.cg 16 bytes, zero-fill past src_bytes
cp_async_commit = ptx.cp_async_commit
cp_async_wait = ptx.cp_async_wait
ex2 = ptx.ex2                     # ex2.approx.ftz.f32
shl_clamp = ptx.shl_clamp         # shl.b32: x << n, 0 for n >= 32


# --------------------------------------------------------------------------- mbarrier

@_intrinsic
def mbarrier_init(typingctx, bar, count):
    """``mbarrier.init.shared::cta.b64 [bar], count`` (bar: 8-byte aligned shared address)."""
    def codegen(context, builder, sig, args):
        b = context.cast(builder, args[0], sig.args[0], types.uint32)
        c = context.cast(builder, args[1], sig.args[1], types.uint32)
        _asm(builder, _VOID, [_I32, _I32], "mbarrier.init.shared::cta.b64 [$0], $1;",
             "r,r,~{memory}", [b, c])
        return context.get_dummy_value()
    return types.void(bar, count), codegen


@_intrinsic
def mbarrier_arrive_expect_tx(typingctx, bar, nbytes):
    """``mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], nbytes`` (one arrival that also
    expects ``nbytes`` of asynchronous transactions)."""
    def codegen(context, builder, sig, args):
        b = context.cast(builder, args[0], sig.args[0], types.uint32)
        n = context.cast(builder, args[1], sig.args[1], types.uint32)
        _asm(builder, _VOID, [_I32, _I32],
             "mbarrier.arrive.expect_tx.shared::cta.b64 _, [$0], $1;", "r,r,~{memory}", [b, n])
        return context.get_dummy_value()
    return types.void(bar, nbytes), codegen


@_intrinsic
def mbarrier_arrive(typingctx, bar):
    """``mbarrier.arrive.shared::cta.b64 _, [bar]``."""
    def codegen(context, builder, sig, args):
        b = context.cast(builder, args[0], sig.args[0], types.uint32)
        _asm(builder, _VOID, [_I32], "mbarrier.arrive.shared::cta.b64 _, [$0];",
             "r,~{memory}", [b])
        return context.get_dummy_value()
    return types.void(bar), codegen


@_intrinsic
def mbarrier_try_wait(typingctx, bar, phase):
    """``mbarrier.try_wait.parity.shared::cta.b64``: 1 when the phase with parity ``phase``
    has completed, else 0 (after a bounded, hardware-chosen wait). Spin on it."""
    def codegen(context, builder, sig, args):
        b = context.cast(builder, args[0], sig.args[0], types.uint32)
        p = context.cast(builder, args[1], sig.args[1], types.uint32)
        return _asm(builder, _I32, [_I32, _I32],
                    "{ .reg .pred P; mbarrier.try_wait.parity.shared::cta.b64 P, [$1], $2; "
                    "selp.u32 $0, 1, 0, P; }", "=r,r,r,~{memory}", [b, p])
    return types.uint32(bar, phase), codegen


@_intrinsic
def cp_async_bulk_g2s(typingctx, dst, src, nbytes, bar):
    """``cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [src],
    nbytes, [bar]``: a 1-D bulk copy (TMA without a tensor map; 16-byte aligned, ``nbytes``
    a multiple of 16) completing on mbarrier ``bar``. Copies bytes as they are: no swizzle."""
    def codegen(context, builder, sig, args):
        d = context.cast(builder, args[0], sig.args[0], types.uint32)
        s = context.cast(builder, args[1], sig.args[1], types.uint64)
        n = context.cast(builder, args[2], sig.args[2], types.uint32)
        b = context.cast(builder, args[3], sig.args[3], types.uint32)
        _asm(builder, _VOID, [_I32, _I64, _I32, _I32],
             "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes "
             "[$0], [$1], $2, [$3];", "r,l,r,r,~{memory}", [d, s, n, b])
        return context.get_dummy_value()
    return types.void(dst, src, nbytes, bar), codegen


# --------------------------------------------------------------------------- conversions

def pack2(kind):
    """``(lo, hi) float32 -> uint32`` holding two fp16 (``kind='f16'``) or bf16 (``'bf16'``)
    rounded to nearest, ``lo`` in the low half: :mod:`ptx`'s ``cvt`` intrinsic."""
    return {"f16": ptx.pack_f16x2, "bf16": ptx.pack_bf16x2}[kind]


# --------------------------------------------------------------------------- wgmma

def _acc_ptrs(context, builder, arrty, arr, n):
    ary = context.make_array(arrty)(context, builder, arr)
    return [builder.gep(ary.data, [ir.Constant(_I32, i)]) for i in range(n)]


@_intrinsic
def _fence_acc_impl(typingctx, acc, n):
    if not isinstance(acc, types.Array) or not isinstance(n, types.IntegerLiteral):
        return None
    count = n.literal_value

    def codegen(context, builder, sig, args):
        for p in _acc_ptrs(context, builder, sig.args[0], args[0], count):
            v = builder.load(p)
            builder.store(_asm(builder, _F32, [_F32], "", "=f,0", [v]), p)
        return context.get_dummy_value()
    return types.void(acc, n), codegen


@functools.lru_cache(maxsize=None)
def fence_acc(n):
    """Device function ``f(acc)``: pins the ``n`` floats of local array ``acc`` after the
    preceding volatile asm (``wgmma_wait``), so their reads are not hoisted above it."""
    from numba import cuda

    @cuda.jit(device=True, inline=True, cache=True)
    def f(acc):
        _fence_acc_impl(acc, n)
    return f


def _wgmma_text(n, kind, a_regs, trans_b):
    nd = n // 2
    d = ", ".join(f"${i}" for i in range(nd))
    base = 2 * nd                                   # after the outputs and tied inputs
    if a_regs:
        a = "{" + ", ".join(f"${base + i}" for i in range(4)) + "}"
        b, sc = f"${base + 4}", f"${base + 5}"
        tail = f"p, 1, 1, {int(trans_b)}"
    else:
        a, b, sc = f"${base}", f"${base + 1}", f"${base + 2}"
        tail = f"p, 1, 1, 0, {int(trans_b)}"
    return ("{ .reg .pred p; setp.ne.b32 p, " + sc + ", 0; "
            f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{kind}.{kind} "
            "{" + d + "}, " + f"{a}, {b}, {tail}; }}")


@functools.lru_cache(maxsize=None)
def wgmma_ss(n, kind, trans_b=False):
    """Intrinsic ``f(acc, desc_a, desc_b, scale_d)``: ``wgmma.mma_async m64n{n}k16``, f32 +=
    ``kind`` (``'f16'``/``'bf16'``) with A (64x16, K-major) and B (16xN; K-major, or MN-major
    when ``trans_b``) in shared memory given by uint64 descriptors; ``scale_d`` = 0 ignores
    the old accumulator. ``acc``: local float32 array of ``n // 2`` (this thread's fragment)."""
    nd = n // 2
    text = _wgmma_text(n, kind, False, trans_b)
    cons = ",".join(["=f"] * nd + [str(i) for i in range(nd)] + ["l", "l", "r", "~{memory}"])

    def impl(typingctx, acc, desc_a, desc_b, scale_d):
        def codegen(context, builder, sig, args):
            ptrs = _acc_ptrs(context, builder, sig.args[0], args[0], nd)
            vals = [builder.load(p) for p in ptrs]
            da = context.cast(builder, args[1], sig.args[1], types.uint64)
            db = context.cast(builder, args[2], sig.args[2], types.uint64)
            sc = context.cast(builder, args[3], sig.args[3], types.int32)
            ret = ir.LiteralStructType([_F32] * nd)
            res = _asm(builder, ret, [_F32] * nd + [_I64, _I64, _I32], text, cons,
                       vals + [da, db, sc])
            for i, p in enumerate(ptrs):
                builder.store(builder.extract_value(res, i), p)
            return context.get_dummy_value()
        return types.void(acc, desc_a, desc_b, scale_d), codegen
    impl.__name__ = f"wgmma_ss_m64n{n}k16_{kind}_t{int(trans_b)}"
    return _intrinsic(impl)


@functools.lru_cache(maxsize=None)
def wgmma_rs(n, kind, trans_b=True):
    """Intrinsic ``f(acc, a0, a1, a2, a3, desc_b, scale_d)``: ``wgmma.mma_async m64n{n}k16``
    with A from registers (four uint32 of packed ``kind`` pairs: the m16n8k16 A fragment of
    this thread's warp, rows 16*warp..+15) and B from shared memory (MN-major when
    ``trans_b``, the layout of V for P.V)."""
    nd = n // 2
    text = _wgmma_text(n, kind, True, trans_b)
    cons = ",".join(["=f"] * nd + [str(i) for i in range(nd)] + ["r"] * 4 +
                    ["l", "r", "~{memory}"])

    def impl(typingctx, acc, a0, a1, a2, a3, desc_b, scale_d):
        def codegen(context, builder, sig, args):
            ptrs = _acc_ptrs(context, builder, sig.args[0], args[0], nd)
            vals = [builder.load(p) for p in ptrs]
            regs = [context.cast(builder, args[1 + i], sig.args[1 + i], types.uint32)
                    for i in range(4)]
            db = context.cast(builder, args[5], sig.args[5], types.uint64)
            sc = context.cast(builder, args[6], sig.args[6], types.int32)
            ret = ir.LiteralStructType([_F32] * nd)
            res = _asm(builder, ret, [_F32] * nd + [_I32] * 4 + [_I64, _I32], text, cons,
                       vals + regs + [db, sc])
            for i, p in enumerate(ptrs):
                builder.store(builder.extract_value(res, i), p)
            return context.get_dummy_value()
        return types.void(acc, a0, a1, a2, a3, desc_b, scale_d), codegen
    impl.__name__ = f"wgmma_rs_m64n{n}k16_{kind}_t{int(trans_b)}"
    return _intrinsic(impl)


@cuda_device_function
def shfl_xor(x, m):
    """``shfl.sync.bfly`` over the full warp: ``x`` of lane ``lane ^ m`` (a device function,
    so that the simulator can swap in a model: Numba's simulator has no warp shuffles)."""
    return _cuda.shfl_xor_sync(0xFFFFFFFF, x, m)


@cuda_device_function
def vote_any(p):
    """``vote.sync.any.pred`` over the full warp: whether ``p`` holds in any lane (so that a
    branch on it is warp-uniform; a model on the simulator)."""
    return _cuda.any_sync(0xFFFFFFFF, p)


# --------------------------------------------------------------------------- simulator
# Under Numba's CUDA simulator these names are pure-Python models (ptx_sm90_sim), so tests
# can run flash_wgmma's whole kernel on the CPU.
from numba import config as _config  # noqa: E402

if _config.ENABLE_CUDASIM:
    from .ptx_sm90_sim import (cp_async_16, cp_async_bulk_g2s, cp_async_commit,  # noqa: E402,F401,F811
                               cp_async_wait, data_ptr, ex2, fence_acc, fence_proxy_async,
                               shl_clamp,
                               mbarrier_arrive, mbarrier_arrive_expect_tx, mbarrier_init,
                               mbarrier_try_wait, pack2, shfl_xor, smem_addr, wgmma_commit,
                               vote_any, wgmma_fence, wgmma_rs, wgmma_ss, wgmma_wait)
