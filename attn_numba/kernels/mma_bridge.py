"""Tensor-core bridge: Numba has no mma intrinsics, so a few lines of CUDA C++ (inline PTX)
are compiled by NVRTC and linked into Numba kernels.

Only instructions Numba cannot express live here; every index computation and all of the
attention logic stays in Python. The functions use Numba's device ABI (the C function writes
its result through the first pointer and returns 0), are declared with ``cuda.declare_device``
and carry :data:`MMA_SOURCE` as ``link=``, so a kernel that calls them links the source
automatically. With nvJitLink present Numba links with LTO, which inlines the wrappers.

Consequences of linking foreign code (numba-cuda 0.30.4):

* ``cache=True`` is impossible: ``CUDACodeLibrary`` refuses to pickle a library with linking
  files ("Cannot pickle CUDACodeLibrary with linking files"), so kernels that call these
  functions are compiled once per process (per specialisation, via an lru_cache factory).
* ``cuda.compile_ptx`` still works on a machine without a GPU: it produces the PTX of the
  Numba part only, with ``call`` instructions to the external functions.
* The simulator cannot run foreign functions. Every function has a pure-Python twin below
  (``*_py``) used by the NumPy emulation in the tests; kernels that use the bridge refuse
  ``problem.on_simulator``.

Fragment layout of ``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`` (PTX ISA,
"Matrix Fragments for mma.m16n8k16 with floating point type"), for lane ``l`` of a warp,
``g = l // 4`` (groupID) and ``t = l % 4`` (thread in group); each A/B register holds two
fp16 values, the lower-indexed one in the low 16 bits:

* A (16x16, row-major):  a0 = A[g, 2t:2t+2], a1 = A[g+8, 2t:2t+2],
  a2 = A[g, 2t+8:2t+10], a3 = A[g+8, 2t+8:2t+10]
* B (16x8, "col", i.e. element pairs run down a column): b0 = B[2t:2t+2, g], b1 = B[2t+8:2t+10, g]
* C/D (16x8, fp32): c0, c1 = C[g, 2t], C[g, 2t+1];  c2, c3 = C[g+8, 2t], C[g+8, 2t+1]

The index helpers that encode this layout are in :mod:`attn_numba.kernels.v4_tensor_core`
(shared by the kernel and the tests).
"""
import numpy as np
from numba import cuda, types

#: The CUDA C++ source linked into every kernel that uses the bridge.
MMA_SOURCE_TEXT = r"""
struct f32x4 { float x, y, z, w; };

// D = A * B + C on the tensor cores, one warp, m16n8k16, fp16 inputs, fp32 accumulate.
extern "C" __device__ int mma_f16_16816(f32x4 *d, unsigned a0, unsigned a1, unsigned a2,
                                        unsigned a3, unsigned b0, unsigned b1,
                                        float c0, float c1, float c2, float c3)
{
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d->x), "=f"(d->y), "=f"(d->z), "=f"(d->w)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1),
          "f"(c0), "f"(c1), "f"(c2), "f"(c3));
    return 0;
}

// Two fp32 values -> one fp16x2 register (round to nearest even); lo in the low 16 bits.
extern "C" __device__ int pack_f16x2(unsigned *d, float lo, float hi)
{
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(*d) : "f"(hi), "f"(lo));
    return 0;
}

// 2**x, the SFU approximation (ex2.approx.ftz.f32; 2**-inf = +0).
extern "C" __device__ int exp2_approx(float *d, float x)
{
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(*d) : "f"(x));
    return 0;
}
"""

MMA_SOURCE = cuda.CUSource(MMA_SOURCE_TEXT)

F32x4 = types.UniTuple(types.float32, 4)

#: mma_f16_16816(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3) -> (d0, d1, d2, d3)
mma_f16_16816 = cuda.declare_device(
    "mma_f16_16816", F32x4(*([types.uint32] * 6 + [types.float32] * 4)), link=MMA_SOURCE)
#: pack_f16x2(lo, hi) -> uint32 holding (fp16(lo), fp16(hi))
pack_f16x2 = cuda.declare_device(
    "pack_f16x2", types.uint32(types.float32, types.float32), link=MMA_SOURCE)
#: exp2_approx(x) -> 2**x (fast, ~2 ulp; exp2_approx(-inf) = 0)
exp2_approx = cuda.declare_device(
    "exp2_approx", types.float32(types.float32), link=MMA_SOURCE)


# --------------------------------------------------------------------------- Python twins

def pack_f16x2_py(lo, hi):
    """Host twin of :func:`pack_f16x2`."""
    pair = np.array([lo, hi], np.float32).astype(np.float16)
    return int(pair.view(np.uint32)[0])


def unpack_f16x2_py(word):
    """(lo, hi) float32 values of an fp16x2 word."""
    return np.array([word], np.uint32).view(np.float16).astype(np.float32)


def mma_f16_16816_py(a_regs, b_regs, c_regs):
    """Emulate one warp's mma.m16n8k16 from per-lane registers.

    ``a_regs``: uint32 (32, 4), ``b_regs``: uint32 (32, 2), ``c_regs``: float32 (32, 4), indexed
    [lane, register] as the hardware holds them. Reassembles A, B, C with the PTX fragment
    layout, multiplies in float32 and scatters D back to (32, 4). Independent of the kernel's
    index helpers on purpose: it is the spec they are tested against.
    """
    A = np.zeros((16, 16), np.float32)
    B = np.zeros((16, 8), np.float32)
    C = np.zeros((16, 8), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for r, (row, col) in enumerate(((g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8),
                                        (g + 8, 2 * t + 8))):
            A[row, col:col + 2] = unpack_f16x2_py(a_regs[lane, r])
        for r, krow in enumerate((2 * t, 2 * t + 8)):
            B[krow:krow + 2, g] = unpack_f16x2_py(b_regs[lane, r])
        C[g, 2 * t:2 * t + 2] = c_regs[lane, 0:2]
        C[g + 8, 2 * t:2 * t + 2] = c_regs[lane, 2:4]
    D = A @ B + C
    d = np.zeros((32, 4), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        d[lane, 0:2] = D[g, 2 * t:2 * t + 2]
        d[lane, 2:4] = D[g + 8, 2 * t:2 * t + 2]
    return d
