"""Index maps of kernel v4 (flash_tc) and NumPy emulations of the instructions they feed.

The functions in the first part are plain Python: the kernel compiles the very same source as
inline device functions, and tests/test_v4_fragments.py and :mod:`v4_emulation` call them on
the CPU. The second part emulates ``mma.sync.m16n8k16``, ``ldmatrix`` and ``cvt`` packs
lane by lane from the PTX ISA's fragment tables, written out independently of the index maps,
so a map that disagrees with the hardware makes the emulated attention wrong.

mma.m16n8k16 fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane ``l``,
``g = l // 4``, ``t = l % 4``; each A/B register holds two 16-bit values, the lower-indexed
one in the low half:

* A (16x16, row): a0 = A[g, 2t:2t+2], a1 = A[g+8, 2t:2t+2], a2 = A[g, 2t+8:..], a3 = A[g+8, 2t+8:..]
* B (16x8, col):  b0 = B[2t:2t+2, g], b1 = B[2t+8:2t+10, g]
* C/D (16x8 f32): c0, c1 = C[g, 2t:2t+2]; c2, c3 = C[g+8, 2t:2t+2]

ldmatrix.m8n8 (x1/x2/x4): lanes 8i..8i+7 give the addresses of rows 0..7 of matrix i; lane
``l`` receives, in register i, row ``l // 4``, elements ``2(l%4)``, ``2(l%4)+1`` of matrix i,
or with ``.trans`` elements ``[2(l%4)][l//4]`` and ``[2(l%4)+1][l//4]``.
"""
import numpy as np


# --------------------------------------------------------------------------- fragment maps

def a_frag_rc(lane, reg):
    """(row, col) in the 16x16 A tile of the first element of A register ``reg`` of ``lane``;
    the second element is at (row, col + 1)."""
    g = lane >> 2
    t = lane & 3
    return g + 8 * (reg & 1), 2 * t + 8 * (reg >> 1)


def b_frag_kn(lane, reg):
    """(k, n) in the 16x8 B tile of the first element of B register ``reg``; the second is at
    (k + 1, n)."""
    g = lane >> 2
    t = lane & 3
    return 2 * t + 8 * reg, g


def c_frag_rc(lane, reg):
    """(row, col) in the 16x8 C/D tile of fp32 accumulator register ``reg`` of ``lane``."""
    g = lane >> 2
    t = lane & 3
    return g + 8 * (reg >> 1), 2 * t + (reg & 1)


def p_from_s(kstep, reg):
    """``(ntile, creg)``: A register ``reg`` of P for P.V k-step ``kstep`` packs S n-tile
    ``ntile``'s accumulators ``creg`` (low half) and ``creg + 1`` (high half)."""
    return 2 * kstep + (reg >> 1), 2 * (reg & 1)


def k_ldsm_rc(lane, pair, kstep):
    """(key row, column) in the K tile whose address ``lane`` gives to ``ldmatrix.x4`` for
    S n-tiles ``2*pair`` and ``2*pair+1`` at Q.K^T k-step ``kstep``.

    Matrices: 0 = keys 16p..16p+7 x cols 16k..16k+7, 1 = same keys x cols +8, 2 = keys +8 x
    cols 16k, 3 = keys +8 x cols +8; so the four registers are (b0, b1) of n-tile 2p and
    (b0, b1) of n-tile 2p+1 (B[k, n] = K[n, k]: K's rows are B's columns).
    """
    i = lane >> 3
    return 16 * pair + (lane & 7) + 8 * (i >> 1), 16 * kstep + 8 * (i & 1)


def v_ldsm_rc(lane, kstep, pair):
    """(key row, column) in the V tile whose address ``lane`` gives to ``ldmatrix.x4.trans``
    for P.V k-step ``kstep`` and O n-tiles ``2*pair``, ``2*pair+1``.

    Matrices: 0 = keys 16k..16k+7 x cols 16p..16p+7, 1 = keys +8 x the same cols, 2 = keys
    16k x cols +8, 3 = keys +8 x cols +8; transposed on load, the registers are (b0, b1) of
    n-tile 2p and (b0, b1) of n-tile 2p+1 (B[k, n] = V[k, n]).
    """
    i = lane >> 3
    return 16 * kstep + (lane & 7) + 8 * (i & 1), 16 * pair + 8 * (i >> 1)


def kv_chunk(idx, chunks_per_row):
    """(row, 16-byte chunk) of the tile that copy ``idx`` of a tile load moves."""
    r = idx // chunks_per_row
    return r, idx - r * chunks_per_row


# --------------------------------------------------------------------------- NumPy emulation

def _bits(x, dtype):
    return np.asarray(x, dtype).view(np.uint16).astype(np.uint32)


def pack_py(lo, hi, dtype=np.float16):
    """``cvt.rn.{f16x2,bf16x2}.f32``: two values in one uint32, ``lo`` in the low half."""
    return int(_bits(lo, dtype) | (_bits(hi, dtype) << 16))


def unpack_py(word, dtype=np.float16):
    """(lo, hi) as float32 from a packed 32-bit word."""
    return np.array([word], np.uint32).view(np.uint16).view(dtype).astype(np.float32)


def ldmatrix_py(smem, addr_of_lane, nmat, trans=False):
    """Emulate ``ldmatrix.sync.aligned.m8n8.x{nmat}[.trans].b16``.

    ``smem``: a 2-D uint16 array (rows x columns of 16-bit elements); ``addr_of_lane(l)``
    gives the (row, column) that lane ``l`` points at (only lanes < 8 * nmat are used).
    Returns uint32 registers (32, nmat) as each lane holds them.
    """
    regs = np.zeros((32, nmat), np.uint32)
    for i in range(nmat):
        mat = np.zeros((8, 8), np.uint16)
        for r in range(8):
            row, col = addr_of_lane(8 * i + r)
            mat[r] = smem[row, col:col + 8]
        if trans:
            mat = mat.T
        for lane in range(32):
            pair = mat[lane // 4, 2 * (lane % 4):2 * (lane % 4) + 2].astype(np.uint32)
            regs[lane, i] = pair[0] | (pair[1] << 16)
    return regs


def mma_py(a_regs, b_regs, c_regs, dtype=np.float16):
    """Emulate one warp's ``mma.sync.m16n8k16`` from per-lane registers.

    ``a_regs`` uint32 (32, 4), ``b_regs`` uint32 (32, 2), ``c_regs`` float32 (32, 4), indexed
    [lane, register]. Reassembles A, B, C from the ISA table, multiplies in float32 and returns
    D as (32, 4).
    """
    A = np.zeros((16, 16), np.float32)
    B = np.zeros((16, 8), np.float32)
    C = np.zeros((16, 8), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for r, (row, col) in enumerate(((g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8),
                                        (g + 8, 2 * t + 8))):
            A[row, col:col + 2] = unpack_py(a_regs[lane, r], dtype)
        for r, krow in enumerate((2 * t, 2 * t + 8)):
            B[krow:krow + 2, g] = unpack_py(b_regs[lane, r], dtype)
        C[g, 2 * t:2 * t + 2] = c_regs[lane, 0:2]
        C[g + 8, 2 * t:2 * t + 2] = c_regs[lane, 2:4]
    D = A @ B + C
    d = np.zeros((32, 4), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        d[lane, 0:2] = D[g, 2 * t:2 * t + 2]
        d[lane, 2:4] = D[g + 8, 2 * t:2 * t + 2]
    return d
