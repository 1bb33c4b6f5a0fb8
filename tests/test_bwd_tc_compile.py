"""compile_ptx of the tensor-core backward (bwd_flash_tc) on this CPU, every specialisation
for sm_80 and head size 256 for sm_90: the PTX holds the instructions themselves (mma.sync of
the dtype, ldmatrix, ldmatrix.trans, cp.async; no calls; the atomic-dQ variant's dK/dV kernel
also red.global.add.f32), and no local memory; where ptxas is on PATH, its report shows no
spill and no stack frame. All marked slow.

Registers and spills of every specialisation: notes/bwd_tensor_core.md.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import json, re, sys
    from numba import cuda
    from attn_numba.kernels import bwd_flash_tc as tc
    d, dt, cc = int(sys.argv[1]), sys.argv[2], (int(sys.argv[3]), 0)
    res = {}
    tag = "bf16" if dt == "bfloat16" else "f16"
    for label, disp, sig in tc.compile_targets(d, dt):
        ptx, _ = cuda.compile_ptx(disp.py_func, sig, cc=cc)
        res[label] = dict(
            ptx=ptx, target=f".target sm_{cc[0]}0" in ptx,
            mma=len(re.findall(r"mma\\.sync\\.aligned\\.m16n8k16\\.row\\.col\\.f32\\." + tag, ptx)),
            ldsm=len(re.findall(r"ldmatrix\\.sync\\.aligned\\.m8n8\\.x4\\.shared", ptx)),
            ldsm_t=len(re.findall(r"ldmatrix\\.sync\\.aligned\\.m8n8\\.x4\\.trans", ptx)),
            cp_async=len(re.findall(r"cp\\.async\\.cg\\.shared\\.global", ptx)),
            calls=len(re.findall(r"\\bcall\\b", ptx)),
            red=len(re.findall(r"red\\.global\\.add\\.f32", ptx)),
            st_shared=len(re.findall(r"st\\.shared\\.u32", ptx)),
            local=len(re.findall(r"ld\\.local|st\\.local", ptx)))
    print(json.dumps(res))
""")


def run_compile_script(script, *args):
    """Run ``script`` with the simulator off (compile_ptx needs the real target) in a new
    process; its last stdout line, as JSON."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _compile(d, dtype, cc):
    return run_compile_script(_SCRIPT, d, dtype, cc)


def ptxas_report(ptx, arch):
    """``(registers, spill bytes, stack bytes)`` from ``ptxas -v``, or None without ptxas.
    The PTX ``.version`` is lowered to what the local ptxas reads (ISA = toolkit major - 4;
    the kernels use no newer feature), as scripts/ptxas_v4.py does."""
    exe = shutil.which("ptxas")
    if exe is None:
        return None
    ver = re.search(r"release (\d+)\.(\d+)", subprocess.run(
        [exe, "--version"], capture_output=True, text=True).stdout)
    isa = f"{int(ver.group(1)) - 4}.{ver.group(2)}"
    ptx = re.sub(r"^\.version \d+\.\d+", f".version {isa}", ptx, flags=re.M)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([exe, f"-arch={arch}", "-v", src, "-o", f"{tmp}/k.cubin"],
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = proc.stderr + proc.stdout
    regs = int(re.search(r"Used (\d+) registers", rep).group(1))
    spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill", rep))
    stack = int(re.search(r"(\d+) bytes stack frame", rep).group(1))
    return regs, spill, stack


def _check(d, dtype, cc):
    res = _compile(d, dtype, cc)
    assert len(res) == 6, list(res)        # 3 deterministic + 3 atomic-dQ (deterministic=False)
    for label, r in res.items():
        assert r["target"] and r["calls"] == 0 and r["local"] == 0, (label, r)
        assert (r["red"] > 0) == ("atomic" in label), (label, r)
        if "delta" in label or "convert" in label:
            assert r["mma"] == 0 and r["cp_async"] == 0, (label, r)
        else:
            # five matmuls: S, dP (ldmatrix A and B) and dV, dK / dQ (ldmatrix.trans B)
            assert r["mma"] > 0 and r["ldsm"] > 0 and r["ldsm_t"] > 0, (label, r)
            assert r["cp_async"] > 0, (label, r)
        rep = ptxas_report(r["ptx"], f"sm_{cc}0")
        if rep is not None:
            regs, spill, stack = rep
            assert spill == 0 and stack == 0 and regs <= 255, (label, rep)


@pytest.mark.slow
def test_compile_d128_fp16_sm80():
    _check(128, "float16", 8)


#: every head size and dtype for sm_80 (the A30's), and for sm_90 the head size that takes this
#: backward on the H200 (auto gives 64 and 128 to flash_wgmma there)
@pytest.mark.slow
@pytest.mark.parametrize("d,dtype,cc", [(64, "float16", 8), (64, "bfloat16", 8),
                                        (128, "bfloat16", 8), (256, "float16", 8),
                                        (256, "bfloat16", 8), (256, "float16", 9),
                                        (256, "bfloat16", 9)])
def test_compile_all(d, dtype, cc):
    _check(d, dtype, cc)
