"""Two inline-PTX intrinsics the tensor-core backward needs beyond :mod:`ptx`: unpacking a
packed pair of 16-bit floats into two fp32 values (the preprocess ``delta = rowsum(dO * O)``
reads dO and O as 32-bit words).

* ``unpack_f16x2(word) -> (lo, hi)``: ``cvt.f32.f16`` of each half;
* ``unpack_bf16x2(word) -> (lo, hi)``: a bf16 is the high half of its fp32, so each value is
  a shift or a mask of the word, reinterpreted.

Built like :mod:`ptx`'s intrinsics, with a fixed identity (:func:`ptx.fixed_intrinsic`) so
that kernels holding them keep a disk-cache key that is the same in every process.
"""
from llvmlite import ir
from numba import types

from .ptx import fixed_intrinsic

_I32 = ir.IntType(32)
_F32 = ir.FloatType()
_PAIR = ir.LiteralStructType([_F32, _F32])

_UNPACK = {
    "f16": ("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; "
            "cvt.f32.f16 $0, lo; cvt.f32.f16 $1, hi; }"),
    "bf16": ("{ .reg .b32 t; shl.b32 t, $2, 16; mov.b32 $0, t; "
             "and.b32 t, $2, 0xffff0000; mov.b32 $1, t; }"),
}


def _unpack(kind):
    template = _UNPACK[kind]

    def typer(typingctx, word):
        if not isinstance(word, types.Integer):
            return None
        ret = types.UniTuple(types.float32, 2)
        sig = ret(word)

        def codegen(context, builder, sig, args):
            w = context.cast(builder, args[0], sig.args[0], types.uint32)
            fnty = ir.FunctionType(_PAIR, [_I32])
            res = builder.call(ir.InlineAsm(fnty, template, "=f,=f,r", side_effect=False), [w])
            items = [builder.extract_value(res, i) for i in range(2)]
            return context.make_tuple(builder, sig.return_type, items)

        return sig, codegen

    typer.__name__ = f"unpack_{kind}x2"
    return fixed_intrinsic(typer, f"{__name__}.unpack_{kind}x2")


unpack_f16x2 = _unpack("f16")
unpack_bf16x2 = _unpack("bf16")


# ----------------------------------------------------- the atomic-dQ variant (deterministic=False)
_I64 = ir.IntType(64)
_VOID = ir.VoidType()


def st_shared_u32(typingctx, addr, word):
    """``st.shared.u32 [addr], word``: one 32-bit store at a shared-state-space address (the
    packed dS^T pairs that the atomic dQ product reads back through ``ldmatrix.trans``)."""
    if not (isinstance(addr, types.Integer) and isinstance(word, types.Integer)):
        return None
    sig = types.void(addr, word)

    def codegen(context, builder, sig, args):
        a = context.cast(builder, args[0], sig.args[0], types.uint32)
        w = context.cast(builder, args[1], sig.args[1], types.uint32)
        fnty = ir.FunctionType(_VOID, [_I32, _I32])
        builder.call(ir.InlineAsm(fnty, "st.shared.u32 [$0], $1;", "r,r,~{memory}",
                                  side_effect=True), [a, w])
        return context.get_dummy_value()

    return sig, codegen


def red_add_f32(typingctx, addr, value):
    """``red.global.add.f32 [addr], value``: a fire-and-forget fp32 add at a global address
    (``ptx.gaddr`` plus a byte offset), performed in L2; no result comes back."""
    if not (isinstance(addr, types.Integer) and isinstance(value, types.Float)):
        return None
    sig = types.void(addr, value)

    def codegen(context, builder, sig, args):
        a = context.cast(builder, args[0], sig.args[0], types.uint64)
        x = context.cast(builder, args[1], sig.args[1], types.float32)
        fnty = ir.FunctionType(_VOID, [_I64, _F32])
        builder.call(ir.InlineAsm(fnty, "red.global.add.f32 [$0], $1;", "l,f,~{memory}",
                                  side_effect=True), [a, x])
        return context.get_dummy_value()

    return sig, codegen


st_shared_u32 = fixed_intrinsic(st_shared_u32, f"{__name__}.st_shared_u32")
red_add_f32 = fixed_intrinsic(red_add_f32, f"{__name__}.red_add_f32")
