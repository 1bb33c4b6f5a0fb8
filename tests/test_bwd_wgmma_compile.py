"""compile_ptx of the Hopper backward (bwd_flash_wgmma) on this CPU for sm_90a: the PTX holds
the wgmma instructions themselves (every product of the two passes: 4 x D/16 + ... per
tile), cp.async, no calls and no local memory; where ptxas is on PATH, its report shows the
registers within 255 and the spills notes/bwd_wgmma.md records (the overlapped dK/dV loop
included). D = 128 fp16 in the quick
run, D = 64 and bf16 slow."""
import textwrap

import pytest

from test_bwd_tc_compile import ptxas_report, run_compile_script

_SCRIPT = textwrap.dedent("""
    import json, re, sys
    from numba import cuda
    from attn_numba.kernels import bwd_flash_wgmma as bw
    d, dt, every = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "all"
    tag = "bf16" if dt == "bfloat16" else "f16"
    res = {}
    for label, disp, sig in bw.compile_targets(d, dt, heads=(4,)):
        if label.endswith("_ov") and not every:
            continue
        ptx, _ = cuda.compile_ptx(disp.py_func, sig, cc=(9, 0, "a"))
        res[label] = dict(
            ptx=ptx,
            ss=len(re.findall(r"wgmma\\.mma_async\\.sync\\.aligned\\.m64n64k16\\.f32\\."
                              + tag + r"\\." + tag + r" \\{[^}]*\\}, %rd", ptx)),
            rs=len(re.findall(r"wgmma\\.mma_async\\.sync\\.aligned\\.m64n" + str(d)
                              + r"k16\\.f32\\." + tag + r"\\." + tag + r" \\{[^}]*\\}, \\{", ptx)),
            cp_async=len(re.findall(r"cp\\.async\\.cg\\.shared\\.global", ptx)),
            calls=len(re.findall(r"\\bcall\\b", ptx)),
            local=len(re.findall(r"ld\\.local|st\\.local", ptx)))
    print(json.dumps(res))
""")


def _compile(d, dtype, every):
    return run_compile_script(_SCRIPT, d, dtype, "all" if every else "default")


#: (registers, spill bytes) at most, per (kernel, head size), from notes/bwd_wgmma.md
LIMITS = {("dkdv", 64): (255, 0), ("dkdv", 128): (255, 16), ("dq", 64): (255, 0),
          ("dq", 128): (255, 0), ("dkdv_ov", 64): (255, 0), ("dkdv_ov", 128): (255, 0)}


def _check(d, dtype, every=True):
    res = _compile(d, dtype, every)
    assert len(res) == (3 if every else 2), list(res)   # dK/dV (+ overlapped), dQ
    for label, r in res.items():
        which = ("dkdv_ov" if label.endswith("_ov") else "dkdv") if "dkdv" in label else "dq"
        # dK/dV: S^T and dP^T (D/16 each), dV and dK (BM/16 = 4 each); dQ: S, dP, dQ
        assert r["ss"] == 2 * (d // 16), (label, r["ss"])
        assert r["rs"] == (4 if which == "dq" else 8), (label, r["rs"])
        assert r["cp_async"] > 0 and r["calls"] == 0 and r["local"] == 0, label
        rep = ptxas_report(r["ptx"], "sm_90a")
        if rep is not None:
            regs, spill, _ = rep
            max_regs, max_spill = LIMITS[(which, d)]
            assert regs <= max_regs and spill <= max_spill, (label, rep)


def test_compiles_d128_fp16():
    """The two default kernels (the opt-in overlapped loop: the slow run)."""
    _check(128, "float16", every=False)


@pytest.mark.slow
@pytest.mark.parametrize("d,dtype", [(64, "float16"), (64, "bfloat16"), (128, "float16"),
                                     (128, "bfloat16")])
def test_compiles_every_specialisation(d, dtype):
    _check(d, dtype)
