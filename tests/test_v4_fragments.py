"""CPU tests of the tensor-core kernel v4 (flash_tc): fragment and ldmatrix index maps, a
NumPy emulation of the kernel's tiled Q.K^T / online softmax / P.V built from the kernel's
own index maps, compile_ptx on this CPU (inline PTX: the instructions themselves must be in
the PTX), and supports().

The mma and ldmatrix are emulated by ``v4_layout.mma_py`` / ``ldmatrix_py``, which follow the
PTX ISA's fragment tables (independently of the kernel's maps), so a map that disagrees with
the hardware layout makes the emulated attention wrong.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from attn_numba.kernels import v4_layout as L
from attn_numba.kernels import v4_flash_tc as v4
from attn_numba.kernels.v4_emulation import emulate_flash_tc
from attn_numba.problem import Problem
from attn_numba.reference import mha_fwd_ref
from attn_numba.testing import compare

LANES = np.arange(32)


# --------------------------------------------------------------------------- layout helpers

def test_fragment_helpers_cover_tiles_once():
    a = [(r, c + e) for lane in range(32) for reg in range(4)
         for (r, c) in [L.a_frag_rc(lane, reg)] for e in (0, 1)]
    assert sorted(a) == [(r, c) for r in range(16) for c in range(16)]
    b = [(kk + e, n) for lane in range(32) for reg in range(2)
         for (kk, n) in [L.b_frag_kn(lane, reg)] for e in (0, 1)]
    assert sorted(b) == [(kk, n) for kk in range(16) for n in range(8)]
    c = [L.c_frag_rc(lane, reg) for lane in range(32) for reg in range(4)]
    assert sorted(c) == [(r, n) for r in range(16) for n in range(8)]


def test_fragment_helpers_match_ptx_examples():
    # PTX ISA figures for m16n8k16 (f16 A/B, f32 C): lane 0 holds A[0,0:2], A[8,0:2],
    # A[0,8:10], A[8,8:10]; lane 5 (group 1, thread 1) holds A[1,2:4] in a0.
    assert [L.a_frag_rc(0, r) for r in range(4)] == [(0, 0), (8, 0), (0, 8), (8, 8)]
    assert L.a_frag_rc(5, 0) == (1, 2)
    assert L.a_frag_rc(31, 3) == (15, 14)
    assert [L.b_frag_kn(5, r) for r in range(2)] == [(2, 1), (10, 1)]
    assert [L.c_frag_rc(6, r) for r in range(4)] == [(1, 4), (1, 5), (9, 4), (9, 5)]


def test_p_from_s_maps_c_layout_to_a_layout():
    """A register r of P for k-step kk must hold exactly the S values of the same (row, key)."""
    for kk in range(4):
        for lane in range(32):
            for reg in range(4):
                ar, ac = L.a_frag_rc(lane, reg)        # row, key within the k-step
                nt, creg = L.p_from_s(kk, reg)
                for e in (0, 1):
                    cr, cc = L.c_frag_rc(lane, creg + e)
                    assert (cr, 8 * nt + cc) == (ar, 16 * kk + ac + e)


def test_pack_round_trip(rng):
    import ml_dtypes
    for dt in (np.float16, ml_dtypes.bfloat16):
        x = rng.standard_normal(2).astype(dt)
        w = L.pack_py(x[0], x[1], dt)
        np.testing.assert_array_equal(L.unpack_py(w, dt), x.astype(np.float32))


@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_maps_give_mma_b_fragments(rng, trans):
    """ldmatrix.x4 at k_ldsm_rc (K) / .trans at v_ldsm_rc (V) yields exactly the B fragments
    (b_frag_kn) of two n8 tiles: B[k, n] = K[n, k] for Q.K^T and B[k, n] = V[k, n] for P.V."""
    tile = rng.integers(0, 2**16, size=(32, 48 + 8), dtype=np.uint16)    # 32 keys, D16 = 48
    for pair in range(2):
        for step in range(2):
            if trans:
                regs = L.ldmatrix_py(tile, lambda ln: L.v_ldsm_rc(ln, step, pair), 4, True)
            else:
                regs = L.ldmatrix_py(tile, lambda ln: L.k_ldsm_rc(ln, pair, step), 4)
            for j in range(2):
                nt = 2 * pair + j
                for lane in range(32):
                    for reg in range(2):
                        kk, n = L.b_frag_kn(lane, reg)
                        if trans:   # keys 16*step + kk, d column 8*nt + n
                            want = [tile[16 * step + kk + e, 8 * nt + n] for e in (0, 1)]
                        else:       # key 8*nt + n, d column 16*step + kk
                            want = [tile[8 * nt + n, 16 * step + kk + e] for e in (0, 1)]
                        word = int(regs[lane, 2 * j + reg])
                        assert [word & 0xFFFF, word >> 16] == [int(w) for w in want]


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
            r, col = L.a_frag_rc(lane, reg)
            a[lane, reg] = L.pack_py(A[r, col], A[r, col + 1])
            r, col = L.c_frag_rc(lane, reg)
            c[lane, reg] = C[r, col]
        for reg in range(2):
            kk, n = L.b_frag_kn(lane, reg)
            b[lane, reg] = L.pack_py(B[kk, n], B[kk + 1, n])
    d = L.mma_py(a, b, c)
    want = A.astype(np.float32) @ B.astype(np.float32) + C
    for lane in range(32):
        for reg in range(4):
            r, col = L.c_frag_rc(lane, reg)
            assert abs(d[lane, reg] - want[r, col]) < 1e-4


# --------------------------------------------------------------------------- kernel emulation

def _emulate_case(rng, sq, sk, window, head_size, block_n, heads):
    H, Hkv = 4, 2
    q = rng.standard_normal((1, sq, H, head_size)).astype(np.float16)
    k = rng.standard_normal((1, sk, Hkv, head_size)).astype(np.float16)
    v = rng.standard_normal((1, sk, Hkv, head_size)).astype(np.float16)
    scale = 1 / np.sqrt(head_size)
    head = 3                                 # GQA: query head 3 reads kv head 1
    out, lse = emulate_flash_tc(q[0], k[0], v[0], scale, *window, head, head // (H // Hkv),
                                block_n, heads)
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    ref, ref_lse = mha_fwd_ref(q, k, v, window_size=window)
    lowp, _ = mha_fwd_ref(q, k, v, window_size=window, p_dtype=np.float16)
    lowp = lowp.astype(np.float16).astype(np.float64)
    c = compare(out, lse, ref[0, :, head], ref_lse[0, head], lowp[0, :, head], np.float16)
    assert c.ok, c
    if window == (-1, 0) and sq > sk:
        assert np.all(out[:sq - sk] == 0) and np.all(np.isneginf(lse[:sq - sk]))
    return (q, k, v, scale, head, H // Hkv), out, lse


@pytest.mark.parametrize("sq,sk,window,head_size,block_n,heads", [
    (70, 70, (-1, -1), 32, 32, 1),     # full attention, partial last tiles
    (37, 83, (-1, 0), 32, 16, 2),      # causal, sk > sq (bottom-right aligned)
    (83, 29, (-1, 0), 16, 16, 1),      # causal, sq > sk: leading rows see no key
    (90, 90, (20, 5), 24, 32, 1),      # sliding window, head size 24 (padded to 32)
    (90, 90, (20, 5), 32, 32, 2),      # the same with 2 heads per block (32 positions)
    (66, 66, (0, 0), 8, 32, 2),        # diagonal only, head size 8 (padded to 16)
    (40, 47, (16, 0), 128, 32, 4),     # the default D=128 tile, GQA 4 per block
    (90, 90, (20, 5), 40, 32, 2),      # GQA 2 per block, head size 40 (padded to 48)
    (40, 47, (16, 0), 72, 32, 4),      # GQA 4 per block, head size 72 (padded to 80)
    (100, 100, (-1, 0), 8, 32, 2),     # causal square, head size 8
])
def test_emulated_flash_tc_matches_reference(rng, sq, sk, window, head_size, block_n, heads):
    _emulate_case(rng, sq, sk, window, head_size, block_n, heads)


# --------------------------------------------------------------------------- compile on CPU

def _compile_on_cpu(script):
    """Run a compile_ptx ``script`` in a subprocess with the simulator off; its last stdout
    line is JSON, returned parsed."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_COMPILE_SCRIPT = textwrap.dedent("""
    import json, re
    import numpy as np
    from numba import cuda
    from attn_numba.kernels import v4_flash_tc as v4
    res = {}
    for cc in [(8, 0), (9, 0)]:
        for d, dt in [(64, "float16"), (128, "float16"), (128, "bfloat16"), (256, "float16"),
                      (72, "bfloat16")]:
            for label, fn, sig in v4.compile_targets(d, dt, heads=(4,)):
                ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
                res[f"{cc[0]}{cc[1]}_{d}_{label}"] = dict(
                    target=f".target sm_{cc[0]}{cc[1]}" in ptx,
                    mma=len(re.findall(r"mma\\.sync\\.aligned\\.m16n8k16\\.row\\.col\\.f32\\." + ("bf16" if dt == "bfloat16" else "f16"), ptx)),
                    ldmatrix=len(re.findall(r"ldmatrix\\.sync\\.aligned\\.m8n8\\.x4\\.shared", ptx)),
                    ldmatrix_trans=len(re.findall(r"ldmatrix\\.sync\\.aligned\\.m8n8\\.x4\\.trans", ptx)),
                    cp_async=len(re.findall(r"cp\\.async\\.cg\\.shared\\.global", ptx)),
                    calls=len(re.findall(r"\\bcall\\b", ptx)),
                    local=len(re.findall(r"ld\\.local|st\\.local", ptx)))
    assert v4.compile_targets(128, np.float32) == [] and v4.compile_targets(100, np.float16) == []
    print(json.dumps(res))
""")


@pytest.mark.slow
def test_compile_ptx_on_cpu():
    """compile_ptx of sample specialisations for sm_80 and sm_90, outside the simulator: the
    PTX holds the instructions themselves (no calls to linked code), fully unrolled, with no
    local-memory traffic."""
    res = _compile_on_cpu(_COMPILE_SCRIPT)
    assert len(res) == 2 * 5
    for key, r in res.items():
        d = int(key.split("_")[1])
        bn, d16 = v4.Config(d).block_n, v4.padded(d)
        assert r["target"] and r["calls"] == 0 and r["local"] == 0, (key, r)
        # Q.K^T: (bn/16)(d16/16) ldmatrix.x4, 2 mma each; P.V: (bn/16)(d16/16) ldmatrix.x4.trans,
        # 2 mma each, less the P.V mma of padding columns that are never stored (dead code)
        steps = (bn // 16) * (d16 // 16)
        assert r["ldmatrix"] == steps and r["ldmatrix_trans"] == steps, (key, r)
        dead = (bn // 16) * ((d16 - d) // 8)
        assert r["mma"] == 4 * steps - dead, (key, r)
        sites = 4 if v4.stages(d) == 2 else 3     # prologue + loop load sites of K and V
        assert r["cp_async"] == sites * -(-bn * (d16 // 8) // (32 * v4.WARPS)), (key, r)


# --------------------------------------------------------------------------- supports

def _problem(**kw):
    base = dict(batch=1, total_q=128, total_k=128, max_seqlen_q=128, max_seqlen_k=128,
                num_heads=4, num_kv_heads=1, head_size=128, dtype=np.dtype(np.float16),
                softmax_scale=0.1, window_left=-1, window_right=-1, causal=False,
                lse_batched=True, on_simulator=False)
    base.update(kw)
    return Problem(**base)


def test_default_configuration_fits():
    """Static shared memory under 48 KiB for every head size, and GQA packing that divides
    every group size."""
    for d in range(8, 257, 8):
        assert v4.shared_bytes(v4.config_for(_problem(head_size=d))) <= 48 * 1024, d
    # what the H200 reported for this build
    assert v4.shared_bytes(v4.Config(128, block_n=64, stages=1)) == 34816
    cfg = v4.config_for(_problem())
    assert v4.shared_bytes(cfg) == 34816 and cfg.stages == 2
    assert v4.config_for(_problem(head_size=256)).stages == 1
    assert v4.config_for(_problem(head_size=256), block_n=16).stages == 2
    for group in (1, 2, 3, 4, 6, 8, 16):
        hb = v4.config_for(_problem(num_heads=group * 2, num_kv_heads=2)).heads_per_block
        assert group % hb == 0 and v4.WARPS % hb == 0


def test_supports():
    import ml_dtypes
    assert v4.supports(_problem()) is None
    for d in (8, 64, 72, 96, 128, 200, 256):
        assert v4.supports(_problem(head_size=d)) is None
    assert v4.supports(_problem(dtype=np.dtype(ml_dtypes.bfloat16))) is None
    for bad in (dict(dtype=np.dtype(np.float32)), dict(head_size=100), dict(head_size=4),
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
