"""v5: flash attention for Hopper (sm_90a) with warpgroup MMA (``wgmma.mma_async``) and
asynchronous copies, written in Numba through the inline-PTX intrinsics of
:mod:`attn_numba.kernels.ptx_sm90`.

Work decomposition: one block = one warpgroup (128 threads) owns 64 query rows; rows are
(position, head) pairs of one GQA group: ``HB`` heads (4, 2 or 1) x ``64 / HB`` positions,
row ``r`` = head ``r // PB``, position ``r % PB`` (``PB = 64 / HB`` >= 16, so each warp's 16
rows are one head). Every K/V tile the block stages serves its ``HB`` heads.

Per block:

* Q (64 x D) is copied once into 128B-swizzled shared memory (K-major), K and V tiles of
  ``BN`` keys go into ``STAGES`` = 2 buffers, with 16-byte ``cp.async`` (zero-filled past the
  sequence), the next tile's copies in flight while the current tile is computed
  (commit / wait_group 1). After the wait: ``fence.proxy.async.shared::cta`` (the copies
  must be visible to wgmma's async proxy) and a block barrier.
* S = Q.K^T: ``D / 16`` x ``wgmma m64n{BN}k16``, A = Q and B = K both from shared memory
  by descriptor (K-major), f32 accumulators, one commit group, waited at once.
* Online softmax in fp32 on the accumulator fragments (wgmma_layout.acc_rc: a thread holds
  two rows, reduced across the 4 lanes of a quad), base 2 with ``ex2.approx``.
* O += P.V: ``BN / 16`` x ``wgmma m64n{D}k16`` with A = P from registers (the S fragments,
  packed to fp16/bf16 pairs: wgmma_layout.p_regs) and B = V from shared memory, MN-major
  (the transpose bit), the same swizzled tile layout as K.
* Epilogue: normalise, write fp16/bf16 pairs and lse straight from the registers.

Semantics as every kernel: GQA, window (bottom-right), causal, varlen, lse, rows without a
key give 0 and -inf. Tiles outside the block's key band are skipped; the per-element mask
runs only on tiles not inside every row's band. Not runnable on the simulator (inline PTX);
PTX checked on the CPU with ``compile_ptx(..., cc=(9, 0, "a"))``. Notes: notes/v5_wgmma.md.
"""
import functools
import math

import numpy as np
from numba import config as numba_config
from numba import cuda, float32, int32, types, uint32, uint64

from . import ptx_sm90 as px
from . import wgmma_layout as wl
from .common import NEG_INF, array_type, key_range, seq_span

NAME = "flash_wgmma"

THREADS = 128
BLOCK_M = 64
STAGES = 2
HEAD_SIZES = (64, 128, 256)
#: keys per tile (the N of S = Q.K^T) per head size; 256: 64 keeps O (128 regs) + S in budget
BLOCK_N = {64: 128, 128: 128, 256: 64}
GQA_PACK = True
#: V's descriptor (MN-major, 128B swizzle): LBO = next 64 columns of D, SBO = next 8 keys
#: (CUTLASS's canonical form). True swaps the two: a fallback that scripts/gpu_wgmma_check.py
#: selects if its microtest finds the hardware reads them the other way round.
V_DESC_SWAP = False

LOG2E = np.float32(math.log2(math.e))
LN2 = np.float32(math.log(2.0))
ZERO = np.float32(0.0)
ONE = np.float32(1.0)
U0 = np.uint32(0)
U16 = np.uint32(16)

_smem_offset = cuda.jit(device=True, inline=True, cache=True)(wl.smem_offset)
_kmajor_step = cuda.jit(device=True, inline=True, cache=True)(wl.kmajor_step_offset)
_p_regs = cuda.jit(device=True, inline=True, cache=True)(wl.p_regs)


def kind_of(dtype):
    """'f16' or 'bf16' for a Problem dtype (bf16 = ml_dtypes.bfloat16), else None."""
    dt = np.dtype(dtype)
    if dt == np.float16:
        return "f16"
    if dt.name == "bfloat16":
        return "bf16"
    return None


def shared_bytes(head_size, block_n, stages=STAGES):
    """Dynamic shared memory of one block: Q + stages x (K + V) tiles, plus 1024 bytes of
    slack to align the tiles to the 1024-byte swizzle atom."""
    return 2 * BLOCK_M * head_size + stages * 2 * (2 * block_n * head_size) + wl.ATOM_BYTES


def heads_per_block(group_size):
    if not GQA_PACK:
        return 1
    for hb in (4, 2, 1):
        if group_size % hb == 0:
            return hb


def _desc_hi(lbo, sbo):
    """The constant upper fields of a 128B-swizzle descriptor (start address 0)."""
    return np.uint64(wl.desc_encode(0, lbo, sbo, wl.SWIZZLE_MODE["128B"]))


def build(head_size, kind="f16", heads=1, block_n=None, v_swap=None):
    """The kernel for ``head_size``, ``kind`` ('f16'/'bf16'), ``heads`` query heads per block
    (1, 2 or 4 of one GQA group), key tile ``block_n`` (None: BLOCK_N) and V descriptor
    variant ``v_swap`` (None: V_DESC_SWAP)."""
    return _build(head_size, kind, heads, BLOCK_N[head_size] if block_n is None else block_n,
                  V_DESC_SWAP if v_swap is None else v_swap)


@functools.lru_cache(maxsize=None)
def _build(head_size, kind, heads, block_n, v_swap=False):
    D = head_size
    BN = block_n
    HB = heads
    PB = BLOCK_M // HB
    assert D % 64 == 0 and BN % 64 == 0 and D <= 256 and BN <= 256 and PB >= 16
    CH = D // 8                         # 16-byte chunks per row
    Q_BYTES = 2 * BLOCK_M * D
    KV_BYTES = 2 * BN * D
    Q_LOADS = BLOCK_M * CH // THREADS
    KV_LOADS = BN * CH // THREADS
    QK_STEPS = D // 16
    PV_STEPS = BN // 16
    S_LEN = BN // 2
    PA_LEN = 4 * PV_STEPS
    O_LEN = D // 2
    DQ = _desc_hi(16, wl.ATOM_BYTES)            # K-major Q and K: SBO 1024, LBO unused
    DV = (_desc_hi(wl.ATOM_BYTES, BN * wl.SWIZZLE_BYTES) if v_swap else
          _desc_hi(BN * wl.SWIZZLE_BYTES, wl.ATOM_BYTES))  # MN-major V: LBO = column block
    ROW_BYTES = np.int64(2 * D)

    wg_s = px.wgmma_ss(BN, kind, False)
    wg_o = px.wgmma_rs(D, kind, True)
    fence_s = px.fence_acc(S_LEN)
    fence_o = px.fence_acc(O_LEN)
    wait0 = px.wgmma_wait(0)
    cp_wait1 = px.cp_async_wait(1)
    pack = px.pack2(kind)
    exp2 = px.ex2

    @cuda.jit(device=True, inline=True, cache=True)
    def desc(addr, hi):
        return uint64((addr >> 4) & 0x3FFF) | hi

    @cuda.jit(device=True, inline=True, cache=True)
    def load_kv(kbase, vbase, sk_, sv_, n0, k0, sk, hkv, hkv_n, tid):
        """cp.async of the K and V rows of the tile at key n0 (zero past the sequence)."""
        for it in range(KV_LOADS):
            idx = it * THREADS + tid
            n = idx // CH
            c = idx - n * CH
            key = n0 + n
            nbytes = uint32(16) if key < sk else U0
            row = k0 + min(key, sk - 1)
            off = uint64((np.int64(row) * hkv_n + hkv) * ROW_BYTES + 16 * c)
            so = uint32(_smem_offset(n, 8 * c, BN))
            px.cp_async_16(sk_ + so, kbase + off, nbytes)
            px.cp_async_16(sv_ + so, vbase + off, nbytes)

    jit_kw = dict(cache=True)
    if not numba_config.ENABLE_CUDASIM:
        jit_kw["launch_bounds"] = (THREADS, 1)

    @cuda.jit(**jit_kw)
    def flash_wgmma_kernel(q, k, v, out, lse, cu_q, cu_k, scale_log2, left, right,
                           lse_batched):
        """q, k, v: uint16 (total, heads, D) views of fp16/bf16; out: uint32 (total_q, H,
        D/2); lse float32; scale_log2 = softmax_scale * log2(e). Block (x, y, z) =
        (positions x*PB.., heads y*HB.., sequence z)."""
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        g = lane >> 2
        t = lane & 3
        b = cuda.blockIdx.z
        q0, sq = seq_span(cu_q, b)
        row0 = cuda.blockIdx.x * PB
        if row0 >= sq:
            return
        k0, sk = seq_span(cu_k, b)
        nh = q.shape[1]
        nkv = k.shape[1]
        hbase = cuda.blockIdx.y * HB
        hkv = hbase // (nh // nkv)

        smem = cuda.shared.array(0, types.uint8)
        base = (px.smem_addr(smem) + uint32(1023)) & uint32(0xFFFFFC00)
        sQ = base
        qbase = px.data_ptr(q)
        kbase = px.data_ptr(k)
        vbase = px.data_ptr(v)

        last = min(row0 + PB, sq) - 1
        blo, hi_first = key_range(row0, sq, sk, left, right)
        lo_last, bhi = key_range(last, sq, sk, left, right)
        n_first = (blo // BN) * BN
        ntiles = 0
        if bhi >= blo:
            ntiles = (bhi - n_first) // BN + 1

        # this thread's rows: warp w has rows 16w..16w+15 = one head, positions wpos0..
        hw = hbase + (16 * warp) // PB
        pos_a = row0 + (16 * warp) % PB + g
        pos_b = pos_a + 8
        lo_a, hi_a = key_range(pos_a, sq, sk, left, right)
        lo_b, hi_b = key_range(pos_b, sq, sk, left, right)

        s = cuda.local.array(S_LEN, float32)
        o = cuda.local.array(O_LEN, float32)
        pa = cuda.local.array(PA_LEN, uint32)
        for i in range(O_LEN):
            o[i] = ZERO
        m_a = NEG_INF
        m_b = NEG_INF
        l_a = ZERO
        l_b = ZERO

        if ntiles > 0:
            # Q tile and K/V tile 0: one cp.async group
            for it in range(Q_LOADS):
                idx = it * THREADS + tid
                r = idx // CH
                c = idx - r * CH
                pos = row0 + r % PB
                hq = hbase + r // PB
                nbytes = uint32(16) if pos < sq else U0
                row = q0 + min(pos, sq - 1)
                off = uint64((np.int64(row) * nh + hq) * ROW_BYTES + 16 * c)
                px.cp_async_16(sQ + uint32(_smem_offset(r, 8 * c, BLOCK_M)), qbase + off,
                               nbytes)
            st0 = sQ + uint32(Q_BYTES)
            load_kv(kbase, vbase, st0, st0 + uint32(KV_BYTES), n_first, k0, sk, hkv, nkv,
                    tid)
            px.cp_async_commit()

        for j in range(ntiles):
            n0 = n_first + j * BN
            sK = sQ + uint32(Q_BYTES + (j & 1) * 2 * KV_BYTES)
            sV = sK + uint32(KV_BYTES)
            if j + 1 < ntiles:
                nK = sQ + uint32(Q_BYTES + ((j + 1) & 1) * 2 * KV_BYTES)
                load_kv(kbase, vbase, nK, nK + uint32(KV_BYTES), n0 + BN, k0, sk, hkv, nkv,
                        tid)
            px.cp_async_commit()            # possibly empty: keeps the group count uniform
            cp_wait1()                      # all but the newest group: tile j (and Q) landed
            px.fence_proxy_async()
            cuda.syncthreads()

            # S = Q K^T
            px.wgmma_fence()
            for kk in range(QK_STEPS):
                px_off = _kmajor_step(kk, BLOCK_M)
                kx_off = _kmajor_step(kk, BN)
                wg_s(s, desc(sQ + uint32(px_off), DQ), desc(sK + uint32(kx_off), DQ),
                     int32(1 if kk > 0 else 0))
            px.wgmma_commit()
            wait0()
            fence_s(s)

            for i in range(S_LEN):
                s[i] = s[i] * scale_log2
            if not (lo_last <= n0 and n0 + BN - 1 <= hi_first):
                for i in range(S_LEN):
                    col = n0 + 8 * (i >> 2) + 2 * t + (i & 1)
                    if (i >> 1) & 1:
                        if col < lo_b or col > hi_b:
                            s[i] = NEG_INF
                    else:
                        if col < lo_a or col > hi_a:
                            s[i] = NEG_INF

            # online softmax: a row lives in the 4 lanes of a quad
            mx_a = NEG_INF
            mx_b = NEG_INF
            for i4 in range(S_LEN // 4):
                mx_a = max(mx_a, max(s[4 * i4], s[4 * i4 + 1]))
                mx_b = max(mx_b, max(s[4 * i4 + 2], s[4 * i4 + 3]))
            mx_a = max(mx_a, cuda.shfl_xor_sync(0xFFFFFFFF, mx_a, 1))
            mx_a = max(mx_a, cuda.shfl_xor_sync(0xFFFFFFFF, mx_a, 2))
            mx_b = max(mx_b, cuda.shfl_xor_sync(0xFFFFFFFF, mx_b, 1))
            mx_b = max(mx_b, cuda.shfl_xor_sync(0xFFFFFFFF, mx_b, 2))
            new_a = max(m_a, mx_a)
            new_b = max(m_b, mx_b)
            base_a = ZERO if new_a == NEG_INF else new_a
            base_b = ZERO if new_b == NEG_INF else new_b
            alpha_a = exp2(m_a - base_a)
            alpha_b = exp2(m_b - base_b)
            m_a = new_a
            m_b = new_b
            sum_a = ZERO
            sum_b = ZERO
            for i4 in range(S_LEN // 4):
                s[4 * i4] = exp2(s[4 * i4] - base_a)
                s[4 * i4 + 1] = exp2(s[4 * i4 + 1] - base_a)
                s[4 * i4 + 2] = exp2(s[4 * i4 + 2] - base_b)
                s[4 * i4 + 3] = exp2(s[4 * i4 + 3] - base_b)
                sum_a += s[4 * i4] + s[4 * i4 + 1]
                sum_b += s[4 * i4 + 2] + s[4 * i4 + 3]
            l_a = l_a * alpha_a + sum_a
            l_b = l_b * alpha_b + sum_b
            for i4 in range(O_LEN // 4):
                o[4 * i4] *= alpha_a
                o[4 * i4 + 1] *= alpha_a
                o[4 * i4 + 2] *= alpha_b
                o[4 * i4 + 3] *= alpha_b
            for kk in range(PV_STEPS):
                for jj in range(4):
                    ri = _p_regs(kk, jj)
                    pa[4 * kk + jj] = pack(s[ri], s[ri + 1])
            fence_o(o)                      # the rescaled O is written before the fence

            # O += P V (A = P from registers, B = V MN-major)
            px.wgmma_fence()
            for kk in range(PV_STEPS):
                wg_o(o, pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3],
                     desc(sV + uint32(wl.ATOM_BYTES * 2 * kk), DV), int32(1))
            px.wgmma_commit()
            wait0()
            fence_o(o)
            cuda.syncthreads()              # stage j & 1 is free for tile j + 2

        # epilogue
        l_a += cuda.shfl_xor_sync(0xFFFFFFFF, l_a, 1)
        l_a += cuda.shfl_xor_sync(0xFFFFFFFF, l_a, 2)
        l_b += cuda.shfl_xor_sync(0xFFFFFFFF, l_b, 1)
        l_b += cuda.shfl_xor_sync(0xFFFFFFFF, l_b, 2)
        inv_a = ZERO
        inv_b = ZERO
        lse_a = NEG_INF
        lse_b = NEG_INF
        if l_a > ZERO:
            inv_a = ONE / l_a
            lse_a = m_a * LN2 + math.log(l_a)
        if l_b > ZERO:
            inv_b = ONE / l_b
            lse_b = m_b * LN2 + math.log(l_b)
        if pos_a < sq:
            for i4 in range(O_LEN // 4):
                out[q0 + pos_a, hw, 4 * i4 + t] = pack(o[4 * i4] * inv_a, o[4 * i4 + 1] * inv_a)
        if pos_b < sq:
            for i4 in range(O_LEN // 4):
                out[q0 + pos_b, hw, 4 * i4 + t] = pack(o[4 * i4 + 2] * inv_b,
                                                       o[4 * i4 + 3] * inv_b)
        if t == 0:
            if pos_a < sq:
                if lse_batched:
                    lse[b, hw, pos_a] = lse_a
                else:
                    lse[0, hw, q0 + pos_a] = lse_a
            if pos_b < sq:
                if lse_batched:
                    lse[b, hw, pos_b] = lse_b
                else:
                    lse[0, hw, q0 + pos_b] = lse_b

    return flash_wgmma_kernel


# --------------------------------------------------------------------------- module contract

KERNEL_FUNCS = {}


def _signature():
    u2 = array_type(np.uint16, 3)
    return (u2, u2, u2, array_type(np.uint32, 3), array_type(np.float32, 3),
            array_type(np.int32, 1), array_type(np.int32, 1), types.float32, types.int32,
            types.int32, types.boolean)


def compile_targets(head_size, dtype, heads=(1, 4)):
    """``[(label, python function, signature)]`` for ``compile_ptx(..., cc=(9, 0, "a"))``."""
    kind = kind_of(dtype)
    if kind is None or head_size not in HEAD_SIZES:
        return []
    return [(f"flash_wgmma_kernel_{kind}_d{head_size}_h{hb}",
             build(head_size, kind, hb).py_func, _signature()) for hb in heads]


def ptx_signatures(head_size, dtype):
    return {}


def supports(problem):
    if problem.on_simulator:
        return "the CUDA simulator cannot run inline PTX"
    if kind_of(problem.dtype) is None:
        return f"wgmma kernel is fp16/bf16 only, got {np.dtype(problem.dtype)}"
    if problem.head_size not in HEAD_SIZES:
        return f"head_size {problem.head_size} not in {HEAD_SIZES}"
    cc = cuda.get_current_device().compute_capability
    if tuple(cc) != (9, 0):
        return f"wgmma needs sm_90 (Hopper), this device is sm_{cc[0]}{cc[1]}"
    return None


def _config(problem, heads=None, block_n=None):
    hb = heads_per_block(problem.group_size) if heads is None else heads
    bn = BLOCK_N[problem.head_size] if block_n is None else block_n
    pb = BLOCK_M // hb
    grid = ((max(problem.max_seqlen_q, 1) + pb - 1) // pb, problem.num_heads // hb,
            problem.batch)
    return hb, bn, grid, shared_bytes(problem.head_size, bn)


def _scalars(problem):
    return (np.float32(problem.softmax_scale * math.log2(math.e)),
            np.int32(problem.window_left), np.int32(problem.window_right),
            bool(problem.lse_batched))


def plan(problem, heads=None, block_n=None):
    """One launch: ``(Plan(kernel, grid, 128, views, scalars, shared),)``. The dynamic
    shared memory exceeds 48 KiB, so on a GPU this compiles the kernel for its signature
    and raises its dynamic shared-memory limit (:func:`opt_in_shared`) before returning."""
    from . import Plan
    hb, bn, grid, shared = _config(problem, heads, block_n)
    kernel = build(problem.head_size, kind_of(problem.dtype), hb, bn)
    if not problem.on_simulator:
        opt_in_shared(kernel, _signature(), shared)
    views = (np.uint16, np.uint16, np.uint16, np.uint32)
    return (Plan(kernel, grid, THREADS, views, _scalars(problem), shared),)


_OPTED = set()


def opt_in_shared(kernel, argtypes, nbytes):
    """Compile ``kernel`` for the Numba ``argtypes`` and allow it ``nbytes`` of dynamic shared
    memory (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES; needed above 48 KiB)."""
    kern = kernel.compile(tuple(argtypes))
    cufunc = kern._codelibrary.get_cufunc()
    key = (id(cufunc), nbytes)
    if key in _OPTED:
        return
    from numba.cuda.cudadrv.driver import binding, driver
    attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver.cuKernelSetAttribute(attr, int(nbytes), cufunc.handle, cufunc.device.id)
    _OPTED.add(key)


def launch(problem, q, k, v, out, lse, cu_q, cu_k, stream, heads=None, block_n=None,
           v_swap=None):
    """Contract launch; ``heads`` / ``block_n`` / ``v_swap`` override the defaults (for
    experiments; see :func:`build`)."""
    hb, bn, grid, shared = _config(problem, heads, block_n)
    kernel = build(problem.head_size, kind_of(problem.dtype), hb, bn, v_swap)
    args = (q.view(np.uint16), k.view(np.uint16), v.view(np.uint16), out.view(np.uint32),
            lse, cu_q, cu_k) + _scalars(problem)
    opt_in_shared(kernel, tuple(kernel.typeof_pyval(a) for a in args), shared)
    if isinstance(stream, int):
        stream = cuda.external_stream(stream) if stream else cuda.default_stream()
    kernel[grid, THREADS, stream, shared](*args)
