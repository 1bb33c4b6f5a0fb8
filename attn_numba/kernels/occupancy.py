"""Shared memory and occupancy at launch: the one ``opt_in_shared`` (dynamic shared memory
above 48 KiB), and blocks per SM as a launch parameter: a cap on how many blocks of a kernel
share an SM, set by dynamic shared memory the kernel never touches, and the wave rule that
picks it.

Why: a grid of ``B`` blocks on ``N`` SMs gives each SM about ``B / N`` of them. At ``o``
resident blocks per SM, an SM whose count is not a multiple of ``o`` ends on a round of fewer
blocks, which run slower per block than a full round; a lower ``o`` that divides the count
can finish first (flash_tc at 1024 tokens on the H200: 512 blocks, 4 per SM, 3 resident by
registers; measured in notes/occupancy.md). The cap changes no instruction: the kernel, its
PTX and its disk-cache entry are the same, only the launch's dynamic shared-memory size
differs.
"""
import functools
from typing import NamedTuple

from numba import config as numba_config


class SMLimits(NamedTuple):
    """The device attributes the cap needs (bytes)."""

    sms: int
    smem_per_sm: int
    reserved_per_block: int
    optin_per_block: int
    regs_per_sm: int = 65536
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32


@functools.lru_cache(maxsize=None)
def _limits(device_id):
    from numba import cuda
    dev = cuda.get_current_device()
    return SMLimits(int(dev.MULTIPROCESSOR_COUNT), int(dev.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
                    int(dev.RESERVED_SHARED_MEMORY_PER_BLOCK),
                    int(dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
                    int(dev.MAX_REGISTERS_PER_MULTIPROCESSOR),
                    int(dev.MAX_THREADS_PER_MULTIPROCESSOR),
                    int(dev.MAX_BLOCKS_PER_MULTIPROCESSOR))


def limits():
    """:class:`SMLimits` of the current device (read once per device)."""
    from numba import cuda
    return _limits(cuda.get_current_device().id)


def pad_for_cap(cap, static_bytes, lim):
    """Dynamic shared bytes that let at most ``cap`` blocks of a kernel with ``static_bytes``
    of static shared memory share an SM (0 when the cap is 0). Each block then holds
    ``smem_per_sm // cap`` less 1 KiB, rounded down to 1 KiB: ``cap`` blocks fit and
    ``cap + 1`` do not."""
    if cap <= 0:
        return 0
    per_block = (lim.smem_per_sm // cap - 1024) // 1024 * 1024
    pad = per_block - lim.reserved_per_block - static_bytes
    if pad <= 0:  # shared memory already caps it this low
        return 0
    if (cap + 1) * per_block <= lim.smem_per_sm or static_bytes + pad > lim.optin_per_block:
        raise ValueError(f"no shared-memory pad caps this kernel at {cap} blocks per SM")
    return pad


def resident_blocks(regs, threads, shared_bytes, lim):
    """Blocks of a kernel that fit on one SM at once: by registers (``regs`` per thread,
    rounded up to 8, allocated per warp), by ``shared_bytes`` per block (static plus dynamic,
    and the reserved 1 KiB), by threads and by the block limit."""
    warps = -(-threads // 32)
    by_regs = lim.regs_per_sm // (warps * 32 * (-(-regs // 8) * 8)) if regs else lim.blocks_per_sm
    by_smem = lim.smem_per_sm // (shared_bytes + lim.reserved_per_block)
    return max(0, min(by_regs, by_smem, lim.threads_per_sm // threads, lim.blocks_per_sm))


def sm_time(n, c, rate):
    """Time for one SM to run ``n`` equal blocks at most ``c`` at a time, in units of one
    block alone: full rounds of ``c``, then the remainder together, where ``rate[k - 1]`` is
    the SM's throughput with ``k`` blocks resident (``rate[0] = 1``)."""
    full, rem = divmod(n, c)
    return full * c / rate[c - 1] + (rem / rate[rem - 1] if rem else 0.0)


def best_cap(blocks, occupancy, sms, rate):
    """The cap (0: none) on blocks per SM that finishes a grid of ``blocks`` first, by
    :func:`sm_time` of the busiest SM (``ceil(blocks / sms)`` blocks: the block scheduler
    deals them out evenly). ``occupancy``: the blocks per SM that fit; ``rate``: the SM's
    relative throughput with 1, 2, ... blocks resident (measured per kernel). Ties keep the
    higher occupancy."""
    n = -(-blocks // sms)
    best = min(range(occupancy, 0, -1), key=lambda c: sm_time(n, c, rate))
    return 0 if best == occupancy else best


def auto_cap(kernel, argtypes, threads, blocks, rate):
    """:func:`best_cap` for a grid of ``blocks`` of ``kernel`` (compiled for ``argtypes`` if
    it is not yet) on the current device; 0 (no cap) on the simulator, and where more blocks
    fit than ``rate`` describes (the rule knows nothing of those rounds)."""
    if numba_config.ENABLE_CUDASIM:
        return 0
    from ..launcher import load_cached
    kern, _ = load_cached(kernel, tuple(argtypes))
    lim = limits()
    resident = resident_blocks(kern.regs_per_thread, threads, kern.shared_mem_per_block, lim)
    return cap_for(blocks, resident, lim.sms, rate)


def cap_for(blocks, resident, sms, rate):
    """:func:`best_cap` where ``rate`` covers ``resident`` blocks per SM, else 0."""
    return best_cap(blocks, resident, sms, rate) if 1 < resident <= len(rate) else 0


def launch_shared(kernel, argtypes, static_bytes, cap):
    """The dynamic shared bytes of a launch capped at ``cap`` blocks per SM, with the
    kernel's dynamic shared-memory limit raised to it. 0 on the simulator or without a cap."""
    if numba_config.ENABLE_CUDASIM or cap <= 0:
        return 0
    pad = pad_for_cap(cap, static_bytes, limits())
    if pad:
        opt_in_shared(kernel, argtypes, pad)
    return pad


_OPTED = set()


def opt_in_shared(kernel, argtypes, nbytes):
    """Compile ``kernel`` for the Numba ``argtypes`` and allow it ``nbytes`` of dynamic shared
    memory (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES; needed when static plus dynamic
    shared memory exceeds 48 KiB). Once per (kernel, size); nothing to do on the simulator."""
    if numba_config.ENABLE_CUDASIM:
        return
    # the cached cubin without Numba's target-context refresh, as the launcher loads it (a
    # disk-cache key that changed on compiling made warm first calls slow: notes/v5_wgmma.md,
    # attn_numba.kernels.ptx.fixed_intrinsic, tests/test_cache_key.py)
    from ..launcher import load_cached
    kern, _ = load_cached(kernel, tuple(argtypes))
    cufunc = kern._codelibrary.get_cufunc()
    key = (id(cufunc), nbytes)
    if key in _OPTED:
        return
    from numba.cuda.cudadrv.driver import binding, driver
    attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver.cuKernelSetAttribute(attr, int(nbytes), cufunc.handle, cufunc.device.id)
    _OPTED.add(key)
