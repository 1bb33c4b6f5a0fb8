"""CPU tests of the tensor-core kernel v4 (flash_tc): fragment layout, a NumPy emulation of
the kernel's tiled Q.K^T / online softmax / P.V built from the kernel's own index helpers,
compile_ptx of the Numba part on this CPU, and supports().

The mma itself is emulated by ``mma_bridge.mma_f16_16816_py``, which reassembles the
matrices with the fragment layout written out from the PTX ISA (independently of the
kernel's helpers), so an index helper that disagrees with the hardware layout makes the
emulated attention wrong.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from attn_numba.kernels import mma_bridge
from attn_numba.kernels import v4_tensor_core as v4
from attn_numba.kernels.v4_emulation import emulate_flash_tc
from attn_numba.problem import Problem
from attn_numba.reference import mha_fwd_ref
from attn_numba.testing import compare

LANES = np.arange(32)


# --------------------------------------------------------------------------- layout helpers

def test_fragment_helpers_cover_tiles_once():
    a = [(r, c + e) for lane in range(32) for reg in range(4)
         for (r, c) in [v4.a_frag_rc(lane, reg)] for e in (0, 1)]
    assert sorted(a) == [(r, c) for r in range(16) for c in range(16)]
    b = [(kk + e, n) for lane in range(32) for reg in range(2)
         for (kk, n) in [v4.b_frag_kn(lane, reg)] for e in (0, 1)]
    assert sorted(b) == [(kk, n) for kk in range(16) for n in range(8)]
    c = [v4.c_frag_rc(lane, reg) for lane in range(32) for reg in range(4)]
    assert sorted(c) == [(r, n) for r in range(16) for n in range(8)]


def test_fragment_helpers_match_ptx_examples():
    # PTX ISA figures for m16n8k16 (f16 A/B, f32 C): lane 0 holds A[0,0:2], A[8,0:2],
    # A[0,8:10], A[8,8:10]; lane 5 (group 1, thread 1) holds A[1,2:4] in a0.
    assert [v4.a_frag_rc(0, r) for r in range(4)] == [(0, 0), (8, 0), (0, 8), (8, 8)]
    assert v4.a_frag_rc(5, 0) == (1, 2)
    assert v4.a_frag_rc(31, 3) == (15, 14)
    assert [v4.b_frag_kn(5, r) for r in range(2)] == [(2, 1), (10, 1)]
    assert [v4.c_frag_rc(6, r) for r in range(4)] == [(1, 4), (1, 5), (9, 4), (9, 5)]


def test_p_from_s_maps_c_layout_to_a_layout():
    """A register r of P for k-step kk must hold exactly the S values of the same (row, key)."""
    for kk in range(4):
        for lane in range(32):
            for reg in range(4):
                ar, ac = v4.a_frag_rc(lane, reg)        # row, key within the k-step
                nt, creg = v4.p_from_s(kk, reg)
                for e in (0, 1):
                    cr, cc = v4.c_frag_rc(lane, creg + e)
                    assert (cr, 8 * nt + cc) == (ar, 16 * kk + ac + e)


def test_pack_and_interleave_round_trip(rng):
    x = rng.standard_normal(4).astype(np.float16)
    w0 = mma_bridge.pack_f16x2_py(x[0], x[1])
    np.testing.assert_array_equal(mma_bridge.unpack_f16x2_py(w0), x[:2].astype(np.float32))
    rows = rng.standard_normal((2, 2)).astype(np.float16)      # V[2p, d:d+2], V[2p+1, d:d+2]
    xw, yw = rows.view(np.uint32)[:, 0]
    lo, hi = v4.interleave_v(np.uint32(xw), np.uint32(yw))
    np.testing.assert_array_equal(mma_bridge.unpack_f16x2_py(lo), rows[:, 0].astype(np.float32))
    np.testing.assert_array_equal(mma_bridge.unpack_f16x2_py(hi), rows[:, 1].astype(np.float32))


def test_mma_emulator_is_a_matmul(rng):
    """The spec emulator, fed registers gathered with the kernel's helpers, computes A.B + C."""
    A = rng.standard_normal((16, 16)).astype(np.float16)
    B = rng.standard_normal((16, 8)).astype(np.float16)
    C = rng.standard_normal((16, 8)).astype(np.float32)
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    c = np.zeros((32, 4), np.float32)
    for lane in range(32):
        for reg in range(4):
            r, col = v4.a_frag_rc(lane, reg)
            a[lane, reg] = mma_bridge.pack_f16x2_py(A[r, col], A[r, col + 1])
            r, col = v4.c_frag_rc(lane, reg)
            c[lane, reg] = C[r, col]
        for reg in range(2):
            kk, n = v4.b_frag_kn(lane, reg)
            b[lane, reg] = mma_bridge.pack_f16x2_py(B[kk, n], B[kk + 1, n])
    d = mma_bridge.mma_f16_16816_py(a, b, c)
    want = A.astype(np.float32) @ B.astype(np.float32) + C
    for lane in range(32):
        for reg in range(4):
            r, col = v4.c_frag_rc(lane, reg)
            assert abs(d[lane, reg] - want[r, col]) < 1e-4


# --------------------------------------------------------------------------- kernel emulation

@pytest.mark.parametrize("sq,sk,window,head_size,block_n,heads", [
    (70, 70, (-1, -1), 32, 32, 1),     # full attention, partial last tiles
    (37, 83, (-1, 0), 32, 16, 2),      # causal, sk > sq (bottom-right aligned)
    (83, 29, (-1, 0), 16, 16, 1),      # causal, sq > sk: leading rows see no key
    (90, 90, (20, 5), 32, 32, 1),      # sliding window: skipped and partial tiles
    (90, 90, (20, 5), 32, 32, 2),      # the same with 2 heads per block (32 positions)
    (66, 66, (0, 0), 16, 32, 2),       # diagonal only
    (40, 47, (16, 0), 128, 32, 4),     # the committed D=128 configuration, GQA 4 per block
])
def test_emulated_flash_tc_matches_reference(rng, sq, sk, window, head_size, block_n, heads):
    H, Hkv = 4, 2
    q = rng.standard_normal((1, sq, H, head_size)).astype(np.float16)
    k = rng.standard_normal((1, sk, Hkv, head_size)).astype(np.float16)
    v = rng.standard_normal((1, sk, Hkv, head_size)).astype(np.float16)
    scale = 1 / np.sqrt(head_size)
    head = 3                                 # GQA: query head 3 reads kv head 1
    out, lse = emulate_flash_tc(q[0], k[0], v[0], scale, *window, head, head // (H // Hkv),
                                block_n, heads)
    ref, ref_lse = mha_fwd_ref(q, k, v, window_size=window)
    lowp, _ = mha_fwd_ref(q, k, v, window_size=window, p_dtype=np.float16)
    lowp = lowp.astype(np.float16).astype(np.float64)
    c = compare(out, lse, ref[0, :, head], ref_lse[0, head], lowp[0, :, head], np.float16)
    assert c.ok, c
    if window == (-1, 0) and sq > sk:
        assert np.all(out[:sq - sk] == 0) and np.all(np.isneginf(lse[:sq - sk]))


# --------------------------------------------------------------------------- compile on CPU

_COMPILE_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import numpy as np
    from numba import cuda
    from numba.cuda.cudadrv import nvrtc
    from attn_numba.kernels import mma_bridge
    from attn_numba.kernels import v4_tensor_core as v4
    res = {}
    for cc in [(8, 0), (9, 0)]:
        nvrtc.compile(mma_bridge.MMA_SOURCE_TEXT, "mma_bridge.cu", cc, ltoir=True)
        targets = [(d, t) for d in v4.HEAD_SIZES for t in v4.compile_targets(d, np.float16)]
        for d, (label, fn, sig) in targets:
            ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
            depot = re.findall(r"__local_depot\\d+\\[(\\d+)\\]", ptx)
            res[f"{cc[0]}{cc[1]}_{d}_{label}"] = dict(
                target=f"sm_{cc[0]}{cc[1]}" in ptx,
                externs=sorted(set(re.findall(r"\\.extern \\.func[^\\n]*\\) (\\w+)", ptx))),
                mma_calls=len(re.findall(r"mma_f16_16816,", ptx)),
                depot=max([int(x) for x in depot] or [0]))
    assert v4.compile_targets(128, np.float32) == [] and v4.compile_targets(96, np.float16) == []
    print(json.dumps(res))
""")


def test_compile_ptx_on_cpu():
    """compile_ptx of every specialisation for sm_80 and sm_90, outside the simulator.

    The PTX holds the Numba part only, with external calls to the bridge; the bridge source
    itself is compiled by NVRTC (to LTO-IR, which needs no driver). The local depot must be
    small: the Q/S/O register arrays were promoted to registers (only call results pass
    through it, and those disappear once LTO inlines the bridge on the GPU).
    """
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(res) == 2 * 2 * len(v4.HEAD_SIZES)
    for key, r in res.items():
        d = int(key.split("_")[1])  # key: "<cc>_<head size>_<label>"
        assert r["target"], key
        assert r["externs"] == ["exp2_approx", "mma_f16_16816", "pack_f16x2"], (key, r)
        bn = v4.BLOCK_N[d]
        # Q.K^T + P.V mma calls per tile, fully unrolled: (BN/8)(D/16) + (BN/16)(D/8)
        assert r["mma_calls"] == (bn // 8) * (d // 16) + (bn // 16) * (d // 8), (key, r)
        assert r["depot"] <= 128, (key, r)


# --------------------------------------------------------------------------- supports

def _problem(**kw):
    base = dict(batch=1, total_q=128, total_k=128, max_seqlen_q=128, max_seqlen_k=128,
                num_heads=4, num_kv_heads=1, head_size=128, dtype=np.dtype(np.float16),
                softmax_scale=0.1, window_left=-1, window_right=-1, causal=False,
                lse_batched=True, on_simulator=False)
    base.update(kw)
    return Problem(**base)


def test_default_configuration_fits():
    """Static shared memory under 48 KiB (Numba cannot opt in to more), whole tiles per
    thread for the staging loops, and GQA packing that divides every group size."""
    for d in v4.HEAD_SIZES:
        bn = v4.BLOCK_N[d]
        assert v4.shared_bytes(d, bn) <= 48 * 1024, d
        assert bn * (d // 4) % v4.THREADS == 0 and (bn // 2) * (d // 4) % v4.THREADS == 0
    assert v4.shared_bytes(128, 64) == 34816       # what the H100 reported for this build
    for group in (1, 2, 3, 4, 6, 8, 16):
        hb = v4.heads_per_block(group)
        assert group % hb == 0 and v4.WARPS % hb == 0


def test_supports():
    assert v4.supports(_problem()) is None
    for d in v4.HEAD_SIZES:
        assert v4.supports(_problem(head_size=d)) is None
    for bad in (dict(dtype=np.dtype(np.float32)), dict(head_size=96), dict(head_size=32),
                dict(on_simulator=True)):
        reason = v4.supports(_problem(**bad))
        assert isinstance(reason, str) and reason, bad


def test_interface_refuses_on_simulator(rng):
    from attn_numba import interface
    if not interface.on_simulator():
        pytest.skip("only meaningful under the simulator")
    q = rng.standard_normal((1, 8, 2, 64)).astype(np.float16)
    with pytest.raises(ValueError, match="flash_tc"):
        interface.mha_fwd(q, q, q, kernel="flash_tc")
