"""Pure-Python models of the warp-level instructions of the tensor-core backward, so that
its real kernels (:mod:`bwd_tc_dkdv`, :mod:`bwd_tc_dq`, the delta preprocess, the atomic-dQ
variant's :mod:`bwd_tc_atomic`; ``st.shared`` and ``red.global.add`` are plain stores and
locked adds) run on Numba's
CUDA simulator in tests. :func:`patched` swaps them in for the inline-PTX intrinsics.

Model (as :mod:`ptx_sm90_sim`, whose shared/global address model and cp.async it reuses):
asynchronous copies complete at once and waits do nothing, so the tests check data flow and
index logic, not asynchronous hazards. ``ldmatrix``, ``mma.sync`` and ``shfl.xor`` are
warp-collective: the 32 lanes publish their operands at a per-warp barrier and each gets
its part of the result. ``mma`` computes with :func:`v4_layout.mma_py`, which rebuilds the
matrices from the PTX ISA's fragment tables, and ``ldmatrix`` follows the ISA's description
(lane l receives row l // 4, elements 2 (l % 4) and 2 (l % 4) + 1 of each matrix, or of its
transpose), both independently of the kernels' index maps. Every lane of a warp must reach
each call, as on the hardware (the kernels' branches around them are warp-uniform).
"""
import contextlib
import threading

import numpy as np

from . import ptx_sm90_sim as S
from . import v4_layout as L

_LOCK = threading.Lock()
_WARPS = {}


class _Warp:
    def __init__(self):
        self.barrier = threading.Barrier(32)
        self.slots = [None] * 32
        self.result = None


def _warp():
    t = threading.current_thread()
    key = (id(t._manager), tuple(t.blockIdx), t.thread_id >> 5)
    with _LOCK:
        w = _WARPS.get(key)
        if w is None:
            w = _WARPS[key] = _Warp()
    return w, t.thread_id & 31


def _collective(value, compute):
    """Publish ``value``; lane 0 computes ``compute(values of lanes 0..31)`` (a list of 32
    results); every lane returns its own entry."""
    w, lane = _warp()
    w.slots[lane] = value
    w.barrier.wait()
    if lane == 0:
        w.result = compute(list(w.slots))
    w.barrier.wait()
    return w.result[lane]


def _u16(smem, addr):
    return int(smem[addr:addr + 2].view(np.uint16)[0])


def _ldmatrix(nmat, trans):
    def ldsm(addr):
        smem = S._TLS.smem

        def compute(addrs):
            regs = []
            for lane in range(32):
                out = []
                for i in range(nmat):
                    if trans:
                        r0 = addrs[8 * i + 2 * (lane % 4)] + 2 * (lane // 4)
                        r1 = addrs[8 * i + 2 * (lane % 4) + 1] + 2 * (lane // 4)
                        out.append(np.uint32(_u16(smem, r0) | _u16(smem, r1) << 16))
                    else:
                        a = addrs[8 * i + lane // 4] + 4 * (lane % 4)
                        out.append(np.uint32(_u16(smem, a) | _u16(smem, a + 2) << 16))
                regs.append(tuple(out))
            return regs
        return _collective(int(addr), compute)
    return ldsm


def _mma(dtype):
    def mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        def compute(vals):
            a = np.array([v[:4] for v in vals], np.uint64).astype(np.uint32)
            b = np.array([v[4:6] for v in vals], np.uint64).astype(np.uint32)
            c = np.array([v[6:] for v in vals], np.float32)
            d = L.mma_py(a, b, c, dtype)
            return [tuple(np.float32(x) for x in row) for row in d]
        return _collective((int(a0), int(a1), int(a2), int(a3), int(b0), int(b1),
                            float(c0), float(c1), float(c2), float(c3)), compute)
    return mma


def _pack(dtype):
    return lambda lo, hi: np.uint32(L.pack_py(np.float32(lo), np.float32(hi), dtype))


def _unpack(dtype):
    return lambda w: tuple(np.float32(x) for x in L.unpack_py(np.uint32(w), dtype))


def _st_shared_u32(addr, word):
    S._TLS.smem[int(addr):int(addr) + 4] = np.array([word], np.uint32).view(np.uint8)


def _red_add_f32(addr, value):
    """The fp32 add in "L2": under a lock, so concurrent simulated threads do not lose one."""
    addr = int(addr)
    flat = S._GLOBAL[addr >> S._ADDR_BITS]
    off = addr & ((1 << S._ADDR_BITS) - 1)
    with _LOCK:
        cell = flat[off:off + 4].view(np.float32)
        cell[0] = np.float32(cell[0] + np.float32(value))


def _shfl_xor(self, mask, value, lane_mask):
    return _collective(value, lambda vals: [vals[i ^ int(lane_mask)] for i in range(32)])


@contextlib.contextmanager
def patched(monkeypatch):
    """Within this block (a pytest ``monkeypatch``), the kernels' intrinsics are the models
    above; the kernels run under the simulator with their real source."""
    import ml_dtypes
    from numba.cuda.simulator import kernelapi

    from . import bwd_tc_dkdv, bwd_tc_dq, ptx
    bf16 = np.dtype(ml_dtypes.bfloat16)
    noop = lambda *a: None  # noqa: E731
    models = dict(
        mma_f16=_mma(np.dtype(np.float16)), mma_bf16=_mma(bf16),
        ldmatrix_x4=_ldmatrix(4, False), ldmatrix_x4_trans=_ldmatrix(4, True),
        cp_async16=S.cp_async_16, cp_async_commit=noop, cp_async_wait_all=noop,
        pack_f16x2=_pack(np.dtype(np.float16)), pack_bf16x2=_pack(bf16), ex2=S.ex2,
        opaque_u32=lambda x: np.uint32(x), smem_u32=S.smem_addr, gaddr=S.data_ptr)
    for name, fn in models.items():
        monkeypatch.setattr(ptx, name, fn)
    monkeypatch.setattr(bwd_tc_dkdv, "st_shared_u32", _st_shared_u32)
    monkeypatch.setattr(bwd_tc_dkdv, "red_add_f32", _red_add_f32)
    monkeypatch.setattr(bwd_tc_dq, "unpack_f16x2", _unpack(np.dtype(np.float16)))
    monkeypatch.setattr(bwd_tc_dq, "unpack_bf16x2", _unpack(bf16))
    monkeypatch.setattr(kernelapi.FakeCUDAModule, "shfl_xor_sync", _shfl_xor, raising=False)
    try:
        yield
    finally:
        _WARPS.clear()
