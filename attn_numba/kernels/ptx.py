"""Thin inline-PTX intrinsics for Numba CUDA kernels: one instruction each, nothing else.

Numba has no tensor-core, ``ldmatrix`` or ``cp.async`` intrinsics. Each function here is a
``numba.core.extending.intrinsic`` whose code generator emits one ``llvmlite.ir.InlineAsm``
call, so kernels that use them stay plain Numba: they compile with ``cache=True`` (the disk
cache and :mod:`attn_numba.warmup`'s fast load work as for every other kernel) and
``numba.cuda.compile_ptx`` shows the instructions in the PTX on a machine without a GPU.

The simulator cannot run inline PTX; kernels built on this module refuse
``problem.on_simulator``. Their index maps are plain Python functions tested against NumPy
emulations of the PTX ISA's fragment layouts (tests/test_v4_fragments.py).

Instructions (PTX ISA 8.x; all exist on sm_80 and sm_90):

* ``mma_f16`` / ``mma_bf16``: ``mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}...f32``,
  D = A.B + C for one warp; A 4 x b32, B 2 x b32, C/D 4 x f32 per lane.
* ``ldmatrix_x{1,2,4}`` and ``ldmatrix_x{1,2,4}_trans``: ``ldmatrix.sync.aligned.m8n8``
  from a shared-memory address (32-bit, see :func:`smem_u32`). Lanes 8i..8i+7 give the row
  addresses of matrix i; lane l receives row l//4, elements 2(l%4), 2(l%4)+1 of each matrix
  (of its transpose with ``.trans``).
* ``cp_async16(dst_smem, src_global, src_bytes)``: ``cp.async.cg.shared.global`` of 16
  bytes, zero-filling the bytes past ``src_bytes`` (0 or 16). ``cp_async_commit``,
  ``cp_async_wait(n)`` (``wait_group n``; ``cp_async_wait_all`` and ``cp_async_wait_1``
  are n = 0 and 1).
* ``pack_f16x2(lo, hi)`` / ``pack_bf16x2(lo, hi)``: ``cvt.rn.{f16x2,bf16x2}.f32``; the
  first argument lands in the low 16 bits.
* ``ex2(x)``: ``ex2.approx.ftz.f32`` (2**-inf = +0).
* ``smem_u32(arr)``: the shared-state-space address of a ``cuda.shared.array``'s first
  element (``cvta.to.shared``); ``gaddr(arr)``: the global address of a device array's data.

Every intrinsic has a fixed identity (:func:`fixed_intrinsic`), so a kernel that holds one
in its closure keeps a disk-cache key that is the same in every process. Instructions that
touch memory are ``volatile`` with a memory clobber, so LLVM neither moves them across
``cuda.syncthreads()`` nor merges them.
"""
import functools
from types import SimpleNamespace

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_IR = {types.uint32: _I32, types.int32: _I32, types.uint64: _I64, types.int64: _I64,
       types.float32: _F32}


#: the typer of every intrinsic made by :func:`fixed_intrinsic`, as an attribute named after
#: the intrinsic, so that the typer pickles by reference (module and qualified name)
_TYPERS = SimpleNamespace()


def fixed_intrinsic(impl, name):
    """``intrinsic(impl)`` with a fixed identity ``name`` that also pickles reproducibly.

    Numba's disk-cache key pickles a kernel's closure, and its loader computes the key before
    compiling while its saver computes it after. An intrinsic pickles as its uuid (random per
    process) and its typer ``impl`` (by value, with the llvmlite types its code generator
    uses, which cache their string form once used). Either makes the key of a kernel whose
    closure holds an intrinsic differ between load and save, so every new process compiles
    again (what that cost: notes/kernel_layer.md). The uuid is set to ``name``, and ``impl`` is registered as
    ``_TYPERS.<name>`` of this module, so that it pickles as that reference."""
    key = name.replace(".", "__")
    impl.__module__ = __name__
    impl.__qualname__ = f"_TYPERS.{key}"
    setattr(_TYPERS, key, impl)
    obj = intrinsic(impl)
    obj._set_uuid(name)
    return obj


def _asm(builder, ret_ir, arg_irs, template, constraints, args, side_effect):
    fnty = ir.FunctionType(ret_ir, arg_irs)
    return builder.call(ir.InlineAsm(fnty, template, constraints, side_effect=side_effect),
                        args)


def _cast_args(context, builder, sig, args, want):
    return [context.cast(builder, a, t, w) for a, t, w in zip(args, sig.args, want)]


def _arity(n):
    """A typer taking exactly ``n`` arguments (Numba's intrinsics take no ``*args``)."""
    names = ", ".join(f"a{i}" for i in range(n))
    src = f"def typer(typingctx{', ' if n else ''}{names}):\n    return build({names})\n"

    def wrap(build):
        scope = {"build": build}
        exec(src, scope)  # noqa: S102 - a fixed, generated signature; no user input
        return scope["typer"]

    return wrap


_FIXED_ARITY = {n: _arity(n) for n in (0, 1, 2, 3, 10)}


def _make(name, template, constraints, arg_types, ret_types, side_effect=False):
    """The intrinsic ``name``, taking ``arg_types`` (any integer/float arguments are cast to
    them) and returning ``ret_types`` (one type, a UniTuple of several, or void for ``()``)."""
    n = len(arg_types)
    if not ret_types:
        ret = types.void
    elif len(ret_types) == 1:
        ret = ret_types[0]
    else:
        ret = types.UniTuple(ret_types[0], len(ret_types))

    def build(*args):
        for a in args:
            if not isinstance(a, (types.Integer, types.Float, types.Boolean)):
                return None
        sig = ret(*args)

        def codegen(context, builder, sig, llargs):
            vals = _cast_args(context, builder, sig, llargs, arg_types)
            arg_irs = [_IR[t] for t in arg_types]
            if not ret_types:
                _asm(builder, ir.VoidType(), arg_irs, template, constraints, vals, True)
                return context.get_dummy_value()
            if len(ret_types) == 1:
                return _asm(builder, _IR[ret_types[0]], arg_irs, template, constraints, vals,
                            side_effect)
            struct = ir.LiteralStructType([_IR[t] for t in ret_types])
            res = _asm(builder, struct, arg_irs, template, constraints, vals, side_effect)
            items = [builder.extract_value(res, i) for i in range(len(ret_types))]
            return context.make_tuple(builder, sig.return_type, items)

        return sig, codegen

    typer = _FIXED_ARITY[n](build)
    return fixed_intrinsic(typer, f"{__name__}.{name}")


_U = types.uint32
_F = types.float32

# --------------------------------------------------------------------------- tensor cores
_MMA = ("mma.sync.aligned.m16n8k16.row.col.f32.{t}.{t}.f32 {{$0,$1,$2,$3}}, "
        "{{$4,$5,$6,$7}}, {{$8,$9}}, {{$10,$11,$12,$13}};")
_MMA_C = "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f"
#: mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3) -> (d0, d1, d2, d3)
mma_f16 = _make("mma_f16", _MMA.format(t="f16"), _MMA_C, (_U,) * 6 + (_F,) * 4, (_F,) * 4)
#: as mma_f16 with bf16 A and B
mma_bf16 = _make("mma_bf16", _MMA.format(t="bf16"), _MMA_C, (_U,) * 6 + (_F,) * 4, (_F,) * 4)

# --------------------------------------------------------------------------- ldmatrix
_LDM = "ldmatrix.sync.aligned.m8n8.x{n}{tr}.shared.b16 {{{outs}}}, [${n}];"


def _ldmatrix(n, trans):
    outs = ",".join(f"${i}" for i in range(n))
    template = _LDM.format(n=n, tr=".trans" if trans else "", outs=outs)
    constraints = ",".join(["=r"] * n + ["r", "~{memory}"])
    name = f"ldmatrix_x{n}{'_trans' if trans else ''}"
    return _make(name, template, constraints, (_U,), (_U,) * n, side_effect=True)


ldmatrix_x1 = _ldmatrix(1, False)
ldmatrix_x2 = _ldmatrix(2, False)
ldmatrix_x4 = _ldmatrix(4, False)
ldmatrix_x1_trans = _ldmatrix(1, True)
ldmatrix_x2_trans = _ldmatrix(2, True)
ldmatrix_x4_trans = _ldmatrix(4, True)

# --------------------------------------------------------------------------- cp.async
#: cp_async16(dst shared u32, src global u64, src_bytes u32): 16 bytes, zero-fill past src_bytes
cp_async16 = _make("cp_async16", "cp.async.cg.shared.global [$0], [$1], 16, $2;",
                   "r,l,r,~{memory}",
                   (_U, types.uint64, _U), (), side_effect=True)
cp_async_commit = _make("cp_async_commit", "cp.async.commit_group;", "~{memory}", (), (),
                        side_effect=True)


@functools.lru_cache(maxsize=None)
def cp_async_wait(n):
    """The intrinsic ``cp.async.wait_group n``: at most ``n`` cp.async groups still pending."""
    return _make(f"cp_async_wait_{int(n)}", f"cp.async.wait_group {int(n)};", "~{memory}",
                 (), (), side_effect=True)


cp_async_wait_all = cp_async_wait(0)
cp_async_wait_1 = cp_async_wait(1)

# --------------------------------------------------------------------------- conversions
#: pack_f16x2(lo, hi) -> u32 with fp16(lo) in the low half (cvt takes the high half first)
pack_f16x2 = _make("pack_f16x2", "cvt.rn.f16x2.f32 $0, $2, $1;", "=r,f,f", (_F, _F), (_U,))
pack_bf16x2 = _make("pack_bf16x2", "cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,f,f", (_F, _F), (_U,))
#: ex2(x) -> 2**x, SFU approximation, ex2(-inf) = 0
ex2 = _make("ex2", "ex2.approx.ftz.f32 $0, $1;", "=f,f", (_F,), (_F,))
#: shl_clamp(x, n) -> x << n, 0 for n >= 32 (PTX clamps the shift; LLVM's shl would be poison)
shl_clamp = _make("shl_clamp", "shl.b32 $0, $1, $2;", "=r,r,r", (_U, _U), (_U,))
#: opaque(x) -> x, through a volatile ``mov``: LLVM cannot hoist what is computed from the
#: result out of a loop (keeps per-lane addresses from occupying registers across the loop)
opaque_u32 = _make("opaque_u32", "mov.b32 $0, $1;", "=r,r", (_U,), (_U,), side_effect=True)


# --------------------------------------------------------------------------- addresses

def _array_data_ptr(context, builder, arrty, arr):
    return cgutils.create_struct_proxy(arrty)(context, builder, value=arr).data


def smem_u32(typingctx, arr):
    """Shared-state-space address (u32) of element 0 of a shared array."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.uint32(arr)

    def codegen(context, builder, sig, args):
        ptr = builder.ptrtoint(_array_data_ptr(context, builder, sig.args[0], args[0]), _I64)
        return _asm(builder, _I32, [_I64],
                    "{ .reg .u64 t; cvta.to.shared.u64 t, $1; cvt.u32.u64 $0, t; }",
                    "=r,l", [ptr], False)

    return sig, codegen


def gaddr(typingctx, arr):
    """Address (u64) of a device array's data, for cp.async sources."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.uint64(arr)

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(_array_data_ptr(context, builder, sig.args[0], args[0]), _I64)

    return sig, codegen


smem_u32 = fixed_intrinsic(smem_u32, f"{__name__}.smem_u32")
gaddr = fixed_intrinsic(gaddr, f"{__name__}.gaddr")
