"""Pure-Python models of :mod:`attn_numba.kernels.ptx_tma` for Numba's CUDA simulator, so that
flash_ws's whole kernel (both roles, each block's own maps, Q/K/V boxes, barriers, masks)
runs on the CPU in tests; ptx_tma swaps them in when the simulator is on. The wgmma, shuffle
and address models are :mod:`ptx_sm90_sim`'s.

Model: a TMA load copies its box at once (zero past the tensor, 128B swizzle:
``v6_layout.box_swizzled_offset``) and completes its bytes on the mbarrier; mbarriers keep
(arrivals pending, transaction bytes, phase) per block and shared address; a wait spins
(sleeping, never at a block barrier: the shuffle and wgmma models use block barriers and
count on every live thread taking part in the same ones). A producer that waited on an
``empty`` barrier could then hold the consumers' barriers forever, so simulator tests use at
least as many stages as key tiles (the producer never waits); the barrier protocol with
fewer stages is checked by the model in ``tests/test_v6_layout.py``. Tensor maps are
:func:`model_maps` handles; ``tensormap_replace_address`` points one at a kernel argument
(``ptx_sm90_sim.data_ptr``'s address), as the device instruction does; ``tensormap_copy``
copies a template handle to a call's slot (any integer address, as a slot in a scratch
array is).
"""
import threading
import time

import numpy as np

from . import ptx_sm90_sim as sim
from . import v6_layout as lay

_LOCK = threading.Lock()
_BARS = {}      # (block, shared address) -> [count, pending, tx, phase]
_MAPS = {}      # map address -> [TiledSpec, global address of the data or None]
_NEXT = [1 << 60]


def _noop(*args):
    return None


fence_mbarrier_init = fence_tensormap_release = fence_proxy_async = _noop
bulk_commit = bulk_wait_read = _noop   # a model store is done when it returns
prefetch_tensormap = _noop     # the model has no descriptor cache


def fence_tensormap_acquire(m):
    return None


def setmaxnreg_dec(n):
    lay.check_nreg(n)
    return _noop


setmaxnreg_inc = setmaxnreg_dec


def _block():
    return tuple(threading.current_thread().blockIdx)


def mbarrier_init(bar, count):
    with _LOCK:
        _BARS[_block(), int(bar)] = [int(count), int(count), 0, 0]


def _flip(b):
    if b[1] == 0 and b[2] == 0:
        b[3] += 1
        b[1] = b[0]


def mbarrier_arrive(bar):
    with _LOCK:
        b = _BARS[_block(), int(bar)]
        b[1] -= 1
        _flip(b)


def mbarrier_arrive_expect_tx(bar, nbytes):
    with _LOCK:
        b = _BARS[_block(), int(bar)]
        b[2] += int(nbytes)
        b[1] -= 1
        _flip(b)


def _complete_tx(block, bar, nbytes):
    with _LOCK:
        b = _BARS[block, int(bar)]
        b[2] -= int(nbytes)
        _flip(b)


def mbarrier_try_wait(bar, parity):
    with _LOCK:
        return np.uint32((_BARS[_block(), int(bar)][3] & 1) != int(parity))


def mbarrier_wait(bar, parity):
    t0 = time.monotonic()
    while not mbarrier_try_wait(bar, parity):
        if time.monotonic() - t0 > 120:
            raise RuntimeError(f"mbarrier at {int(bar)} never completed parity {int(parity)}")
        time.sleep(0.0005)


def mbarrier_wait_bounded(bar, parity, limit):
    for _ in range(max(int(limit), 1)):
        if mbarrier_try_wait(bar, parity):
            return np.uint32(1)
        time.sleep(0.0005)
    return np.uint32(0)


def model_maps(specs):
    """Consecutive model maps (128 bytes apart) of ``specs`` with no data yet; returns the
    address of the first, for the kernel's ``maps`` argument."""
    with _LOCK:
        base = _NEXT[0]
        _NEXT[0] += 128 * len(specs) + 1024
        for i, s in enumerate(specs):
            _MAPS[base + 128 * i] = [s, None]
    return base


def tensormap_copy(n):
    """``tensormap_copy(n)(dst, src)``: the ``n`` model maps from ``src`` (spec and data
    address, 128 bytes apart) copied to ``dst``."""
    def copy(dst, src):
        with _LOCK:
            for i in range(int(n)):
                _MAPS[int(dst) + 128 * i] = list(_MAPS[int(src) + 128 * i])
    return copy


def tensormap_store(first):
    """``tensormap_store(first)(dst, words)``: the model map whose handle is
    ``words[first]`` (:func:`model_words`) copied to ``dst``."""
    def store(dst, words):
        with _LOCK:
            _MAPS[int(dst)] = list(_MAPS[int(words[first])])
    return store


def model_words(specs):
    """The words of :func:`model_maps` ``(specs)`` as a kernel's template parameters: 16
    per map, the first the model map's handle, the rest 0."""
    base = model_maps(specs)
    return tuple(np.int64(base + 128 * i) if j == 0 else np.int64(0)
                 for i in range(len(specs)) for j in range(16))


def tensormap_replace_address(m, addr):
    with _LOCK:
        _MAPS[int(m)][1] = int(addr)


def _box(spec, addr, c0, c1, c2):
    """The box at coordinates (c0, c1, c2) of the 2-byte tensor at ``addr``, zero outside."""
    d, heads, rows = spec.dims
    bc, _, br = spec.box
    flat = sim._GLOBAL[addr >> sim._ADDR_BITS]
    data = flat[addr & ((1 << sim._ADDR_BITS) - 1):].view(np.uint16)[:rows * heads * d]
    x = data.reshape(rows, heads, d)
    out = np.zeros((br, bc), np.uint16)
    c0, c1, c2 = (int(np.int32(np.uint32(c))) for c in (c0, c1, c2))
    if 0 <= c1 < heads:
        r0, r1 = max(c2, 0), min(c2 + br, rows)
        e0, e1 = max(c0, 0), min(c0 + bc, d)
        if r0 < r1 and e0 < e1:
            out[r0 - c2:r1 - c2, e0 - c0:e1 - c0] = x[r0:r1, c1, e0:e1]
    return out


def tma_load_3d(dst, m, c0, c1, c2, bar):
    spec, addr = _MAPS[int(m)]
    assert addr is not None, "tensor map used before its address was written"
    box = _box(spec, addr, c0, c1, c2)
    dst = int(dst)
    assert dst % 1024 == 0, f"TMA destination {dst} not 1024-byte aligned"
    smem = sim._TLS.smem.view(np.uint16)
    smem[(dst + _offsets(*box.shape)) // 2] = box
    _complete_tx(_block(), bar, box.size * 2)


def tma_store_3d(m, src, c0, c1, c2):
    """The box at ``src`` (shared, in the layout a load through the same map leaves) written
    to the tensor at (c0, c1, c2); elements past the tensor are dropped."""
    spec, addr = _MAPS[int(m)]
    assert addr is not None, "tensor map used before its address was written"
    src = int(src)
    assert src % 1024 == 0, f"TMA source {src} not 1024-byte aligned"
    d, heads, rows = spec.dims
    bc, _, br = spec.box
    box = sim._TLS.smem.view(np.uint16)[(src + _offsets(br, bc)) // 2]
    flat = sim._GLOBAL[addr >> sim._ADDR_BITS]
    x = flat[addr & ((1 << sim._ADDR_BITS) - 1):].view(np.uint16)[:rows * heads * d]
    x = x.reshape(rows, heads, d)
    c0, c1, c2 = (int(np.int32(np.uint32(c))) for c in (c0, c1, c2))
    if 0 <= c1 < heads:
        r0, r1 = max(c2, 0), min(c2 + br, rows)
        e0, e1 = max(c0, 0), min(c0 + bc, d)
        if r0 < r1 and e0 < e1:
            x[r0:r1, c1, e0:e1] = box[r0 - c2:r1 - c2, e0 - c0:e1 - c0]


_OFFSETS = {}


def _offsets(rows, cols):
    """``box_swizzled_offset(r, e)`` for every element of a ``rows`` x ``cols`` box."""
    got = _OFFSETS.get((rows, cols))
    if got is None:
        got = np.array([[lay.box_swizzled_offset(r, e) for e in range(cols)]
                        for r in range(rows)], np.int64)
        _OFFSETS[rows, cols] = got
    return got


def _unsupported(*args):
    raise NotImplementedError("no simulator model of this instruction")


def _order_only(bar_id, count):
    """``bar.sync`` / ``bar.arrive`` on a named barrier: here a no-op. flash_ws uses them
    only to order the consumers' tensor-core turns (``v6_roles._scheduler``), never for
    data; the block-barrier models of wgmma and shuffles need both consumers in step, which
    a real turn would break. The turns' protocol is checked by the model in
    ``tests/test_v6_layout.py``."""
    if not 0 < int(bar_id) < 16 or int(count) % 32:
        raise ValueError(f"named barrier {bar_id} with {count} threads")


def st_shared_u32(addr, word):
    sim._TLS.smem[int(addr):int(addr) + 4] = np.array([word], np.uint32).view(np.uint8)


def ld_shared_v4(addr):
    a = int(addr)
    assert a % 16 == 0, f"ld.shared.v4 at {a}"
    return tuple(np.uint32(w) for w in sim._TLS.smem[a:a + 16].view(np.uint32))


def st_global_v4(addr, w0, w1, w2, w3):
    addr = int(addr)
    assert addr % 16 == 0, f"st.global.v4 at {addr:#x}"
    flat = sim._GLOBAL[addr >> sim._ADDR_BITS]
    off = addr & ((1 << sim._ADDR_BITS) - 1)
    flat[off:off + 16] = np.array([w0, w1, w2, w3], np.uint32).view(np.uint8)


def st_global_v4_if(addr, w0, w1, w2, w3, keep):
    if int(keep):
        st_global_v4(addr, w0, w1, w2, w3)


def bar_sync_data(bar_id, count):
    """A named barrier that publishes data (the staged epilogue's): on the simulator a block
    barrier, which every live thread of the block reaches the same number of times (both
    consumers run the same epilogues; the producer has none)."""
    _order_only(bar_id, count)
    threading.current_thread().syncthreads()


tma_load_2d = _unsupported
bar_sync = bar_arrive = _order_only
