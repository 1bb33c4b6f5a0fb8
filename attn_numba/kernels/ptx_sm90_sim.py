"""Pure-Python twins of :mod:`attn_numba.kernels.ptx_sm90` for Numba's CUDA simulator, so
that flash_wgmma's whole kernel (tiles, masks, GQA rows, varlen, the overlapped loop, two
warpgroups) runs on the CPU in tests. ptx_sm90 swaps them in when the simulator is on.

Model: asynchronous operations complete at once (``cp.async`` copies immediately,
``wgmma`` computes immediately, fences and waits do nothing), so the tests check the
kernel's data flow and index logic, not its asynchronous hazards. Shared memory is the
simulated block's dynamic shared buffer (address 0 = its first byte); a global address is
``(array id << 40) + byte offset``. ``wgmma`` reads its operands through the descriptors
with :mod:`attn_numba.kernels.wgmma_emulation` (the ISA-level model) and hands each thread
its fragment; the A-from-registers form gathers the warpgroup's registers first (two block
barriers: every thread of the block must reach it, as in the kernel).
"""
import threading

import numpy as np

from . import wgmma_emulation as em
from . import wgmma_layout as wl

_TLS = threading.local()
_GLOBAL = {}            # array id -> flat uint8 view of a kernel argument
_EXCHANGE = {}          # (block, warpgroup, call) -> {thread: A registers}
_LOCK = threading.Lock()
_ADDR_BITS = 40


def _noop(*args):
    return None


wgmma_fence = wgmma_commit = fence_proxy_async = cp_async_commit = _noop


def wgmma_wait(n):
    return _noop


def cp_async_wait(n):
    return _noop


def fence_acc(n):
    return _noop


def smem_addr(arr):
    """Remember this thread's block shared buffer; its first byte is address 0."""
    _TLS.smem = np.asarray(arr).view(np.uint8)
    return np.uint32(0)


_KEYS = {}              # (data pointer, bytes) -> array id


def data_ptr(arr):
    ary = np.asarray(getattr(arr, "_ary", arr))
    flat = ary.reshape(-1).view(np.uint8)
    ident = (ary.__array_interface__["data"][0], flat.size)
    with _LOCK:
        key = _KEYS.setdefault(ident, len(_KEYS) + 1)
        _GLOBAL[key] = flat
    return np.uint64(key << _ADDR_BITS)


def cp_async_16(dst, src, src_bytes):
    src = int(src)
    flat = _GLOBAL[src >> _ADDR_BITS]
    off = src & ((1 << _ADDR_BITS) - 1)
    dst = int(dst)
    if int(src_bytes):
        _TLS.smem[dst:dst + 16] = flat[off:off + 16]
    else:
        _TLS.smem[dst:dst + 16] = 0


def pack2(kind):
    dtype = np.float16 if kind == "f16" else __import__("ml_dtypes").bfloat16

    def pack(lo, hi):
        return np.uint32(em.pack_pairs(np.float32(lo), np.float32(hi), dtype))
    return pack


def shl_clamp(x, n):
    n = int(n)
    return np.uint32((int(x) << n) & 0xFFFFFFFF) if n < 32 else np.uint32(0)


def ex2(x):
    with np.errstate(over="ignore"):
        return np.float32(np.exp2(np.float32(x)))


def _me():
    t = threading.current_thread()
    tid = t.thread_id
    return t, tid // 128, tid % 128


def _dtype(kind):
    return np.dtype(np.float16) if kind == "f16" else np.dtype(__import__("ml_dtypes").bfloat16)


def _own_fragment(acc, prod, wtid, scale_d):
    for i in range(len(acc)):
        r, c = wl.acc_rc(wtid >> 5, wtid & 31, i)
        acc[i] = np.float32((acc[i] if scale_d else 0.0) + prod[r, c])


def wgmma_ss(n, kind, trans_b=False):
    dtype = _dtype(kind)

    def mma(acc, desc_a, desc_b, scale_d):
        smem = _TLS.smem
        a = em._float(em.operand(smem, int(desc_a), 64, "K"), dtype)
        b = em._float(em.operand(smem, int(desc_b), n, "MN" if trans_b else "K"), dtype)
        _, _, wtid = _me()
        _own_fragment(acc, a @ b.T, wtid, int(scale_d))
    return mma


def wgmma_rs(n, kind, trans_b=True):
    dtype = _dtype(kind)

    def mma(acc, a0, a1, a2, a3, desc_b, scale_d):
        t, grp, wtid = _me()
        gen = getattr(_TLS, "rs_calls", 0)        # every thread makes the same calls
        _TLS.rs_calls = gen + 1
        key = (tuple(t.blockIdx), grp, gen)
        with _LOCK:
            _EXCHANGE.setdefault(key, {})[wtid] = (int(a0), int(a1), int(a2), int(a3))
        t.syncthreads()
        regs = np.array([_EXCHANGE[key][i] for i in range(128)], np.uint64).astype(np.uint32)
        t.syncthreads()
        if wtid == 0:
            with _LOCK:
                _EXCHANGE.pop(key, None)
        a = em.a_from_regs(regs, dtype)
        b = em._float(em.operand(_TLS.smem, int(desc_b), n, "MN" if trans_b else "K"), dtype)
        _own_fragment(acc, a @ b.T, wtid, int(scale_d))
    return mma


def _exchange(value):
    """All threads of the block publish ``value``; returns {thread id: value} of this call."""
    t = threading.current_thread()
    gen = getattr(_TLS, "x_calls", 0)               # every thread makes the same calls
    _TLS.x_calls = gen + 1
    key = (tuple(t.blockIdx), "x", gen)
    with _LOCK:
        _EXCHANGE.setdefault(key, {})[t.thread_id] = value
    t.syncthreads()
    got = dict(_EXCHANGE[key])
    t.syncthreads()
    if t.thread_id == 0:
        with _LOCK:
            _EXCHANGE.pop(key, None)
    return got


def shfl_xor(x, m):
    got = _exchange(x)
    return got[threading.current_thread().thread_id ^ int(m)]


def vote_any(p):
    """Whether ``p`` holds in any thread of the caller's warp (every live thread of the
    block calls it, as with ``shfl_xor``)."""
    got = _exchange(bool(p))
    w = threading.current_thread().thread_id // 32
    return any(v for t, v in got.items() if t // 32 == w)


def _unsupported(*args):
    raise NotImplementedError("no simulator model of mbarrier / cp.async.bulk")


mbarrier_init = mbarrier_arrive = mbarrier_arrive_expect_tx = mbarrier_try_wait = _unsupported
cp_async_bulk_g2s = _unsupported
