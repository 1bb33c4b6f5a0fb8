"""Stage a of the flash_wgmma GPU check: one warpgroup's wgmma (SS and RS, both readings of
the MN-major descriptor) against NumPy."""
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numba import cuda, float32, types, uint32  # noqa: E402

from attn_numba.kernels import ptx_sm90 as px  # noqa: E402
from attn_numba.kernels import v5_flash_wgmma as v5  # noqa: E402
from attn_numba.kernels import wgmma_layout as wl  # noqa: E402
from wgmma_check_common import RES, bf16, log, save  # noqa: E402

@cuda.jit(device=True, inline=True)
def _desc(addr, hi):
    return types.uint64((addr >> 4) & 0x3FFF) | hi


_so = cuda.jit(device=True, inline=True)(wl.smem_offset)
_ks = cuda.jit(device=True, inline=True)(wl.kmajor_step_offset)
_ms = cuda.jit(device=True, inline=True)(wl.mnmajor_step_offset)
_arc = cuda.jit(device=True, inline=True)(wl.a_rc)
_crc = cuda.jit(device=True, inline=True)(wl.acc_rc)


@functools.lru_cache(maxsize=None)
def make_micro(n, kd, kind, a_regs, b_mn):
    """Kernel ``f(a, a32, b, out, b_hi)``: out (64 x n) = A (64 x kd) times B, one
    warpgroup. A from shared memory (K-major) or, with ``a_regs``, from registers. B
    K-major: b is (n, kd), out = A @ b.T; ``b_mn`` (MN-major, the transpose bit): b is
    (kd, n), out = A @ b. ``b_hi``: B's descriptor fields other than the address."""
    nd = n // 2
    b_rows = kd if b_mn else n
    b_cols = n if b_mn else kd
    a_hi = np.uint64(wl.desc_encode(0, 16, 1024))
    wg = px.wgmma_rs(n, kind, b_mn) if a_regs else px.wgmma_ss(n, kind, b_mn)
    fence = px.fence_acc(nd)
    wait0 = px.wgmma_wait(0)
    a_elems = 64 * kd
    b_elems = n * kd
    a_bytes = 64 * 128 * ((kd + 63) // 64)      # swizzled rows are 128 bytes even for kd < 64

    @cuda.jit
    def micro(a, a32, b, out, b_hi):
        tid = cuda.threadIdx.x
        warp = tid >> 5
        lane = tid & 31
        sh = cuda.shared.array(0, types.uint16)
        raw = px.smem_addr(sh)
        base = (raw + uint32(1023)) & uint32(0xFFFFFC00)
        pad = (base - raw) >> 1
        for i in range(tid, a_elems, 128):
            r = i // kd
            c = i - r * kd
            sh[pad + (_so(r, c, 64) >> 1)] = a[r, c]
        for i in range(tid, b_elems, 128):
            r = i // b_cols
            c = i - r * b_cols
            sh[pad + ((a_bytes + _so(r, c, b_rows)) >> 1)] = b[r, c]
        px.fence_proxy_async()
        cuda.syncthreads()
        acc = cuda.local.array(nd, float32)
        for i in range(nd):
            acc[i] = float32(0.0)
        sb = base + uint32(a_bytes)
        px.wgmma_fence()
        for kk in range(kd // 16):
            db = _desc(sb + uint32(_ms(kk) if b_mn else _ks(kk, n)), b_hi)
            if a_regs:
                r0, c0 = _arc(warp, lane, 0)
                r1, c1 = _arc(warp, lane, 1)
                r2, c2 = _arc(warp, lane, 2)
                r3, c3 = _arc(warp, lane, 3)
                wg(acc, a32[r0, (16 * kk + c0) >> 1], a32[r1, (16 * kk + c1) >> 1],
                   a32[r2, (16 * kk + c2) >> 1], a32[r3, (16 * kk + c3) >> 1], db, 1)
            else:
                wg(acc, _desc(base + uint32(_ks(kk, 64)), a_hi), db, 1)
        px.wgmma_commit()
        wait0()
        fence(acc)
        for i in range(nd):
            r, c = _crc(warp, lane, i)
            out[r, c] = acc[i]

    b_bytes = ((b_cols + 63) // 64) * b_rows * 128
    # + 32 KiB of slack: a wrong descriptor reading (the "swapped" one) must read garbage
    # inside the allocation, not fault and poison the context for the rest of the run
    return micro, a_bytes + b_bytes + 1024 + 32768


#: (op, n, k, kinds): SS = A and B in shared memory, RSK = A in registers and B K-major,
#: RS = A in registers and B MN-major (the P.V shape). n = 128 / k = 128 span two 64-column
#: blocks, which is where LBO (MN-major) and the k-step jump (K-major) are exercised.
MICRO = (("SS", 64, 64, ("f16", "bf16")), ("SS", 128, 128, ("f16",)),
         ("RSK", 64, 64, ("f16",)), ("RS", 64, 64, ("f16",)),
         ("RS", 128, 64, ("f16", "bf16")), ("RS", 256, 32, ("f16",)))


def microtest(rng, swapped=False):
    """Run the MICRO kernels against NumPy; ``swapped``: the MN-major rows with LBO and SBO
    swapped instead (only tried when the CUTLASS reading fails)."""
    rows = []
    for op, n, kd, kinds in MICRO:
        if swapped and op != "RS":
            continue
        a_regs, b_mn = op != "SS", op == "RS"
        for kind in kinds:
            dt = np.dtype(np.float16) if kind == "f16" else bf16()
            a = rng.standard_normal((64, kd)).astype(dt)
            b = rng.standard_normal((kd, n) if b_mn else (n, kd)).astype(dt)
            b64 = b.astype(np.float64)
            want = a.astype(np.float64) @ (b64 if b_mn else b64.T)
            variants = ({"cutlass": (kd * 128, 1024)} if b_mn else {"kmajor": (16, 1024)})
            if b_mn and swapped:
                variants = {"swapped": (1024, kd * 128)}
            for name, (lbo, sbo) in variants.items():
                row = dict(op=op, n=n, k=kd, kind=kind, desc=name)
                try:
                    fn, shared = make_micro(n, kd, kind, a_regs, b_mn)
                    out = cuda.to_device(np.full((64, n), np.nan, np.float32))
                    args = (cuda.to_device(a.view(np.uint16)),
                            cuda.to_device(np.ascontiguousarray(a).view(np.uint16).view(np.uint32)),
                            cuda.to_device(b.view(np.uint16)), out,
                            np.uint64(wl.desc_encode(0, lbo, sbo)))
                    if hasattr(fn, "typeof_pyval"):   # not on the simulator
                        v5.opt_in_shared(fn, tuple(fn.typeof_pyval(x) for x in args), shared)
                    fn[1, 128, 0, shared](*args)
                    got = out.copy_to_host()
                    err = float(np.max(np.abs(got - want)))
                    row.update(max_err=err, ok=bool(err < 1e-2 * max(1.0, np.abs(want).max())))
                except Exception as exc:  # noqa: BLE001
                    row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
                log("micro", row)
                rows.append(row)
    RES["micro_swapped" if swapped else "micro"] = rows
    save()
    return rows
