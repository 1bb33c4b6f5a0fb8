"""The TMA / mbarrier / setmaxnreg / named-barrier intrinsics of ``kernels.ptx_tma`` compile to
the instructions they name: one tiny kernel using every one, compiled for sm_90a with the
simulator off (in a subprocess: the test session runs on the simulator), its PTX searched."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import json
    from numba import cuda, types, uint32, uint64
    from attn_numba.kernels import ptx_tma as pt
    from attn_numba.kernels import ptx_sm90 as px

    dec = pt.setmaxnreg_dec(24)
    inc = pt.setmaxnreg_inc(240)
    copy1 = pt.tensormap_copy(1)

    def kern(maps, out):
        smem = cuda.shared.array(0, types.uint8)
        base = px.smem_addr(smem)
        bar = base + uint32(4096)
        m = uint64(maps)
        tid = cuda.threadIdx.x
        if tid == 0:
            pt.mbarrier_init(bar, 1)
            pt.fence_mbarrier_init()
        cuda.syncthreads()
        if tid < 128:
            dec()
            if tid == 0:
                copy1(m + uint64(384), m)
                pt.tensormap_replace_address(m, uint64(maps + 256))
                pt.fence_tensormap_release()
                pt.fence_tensormap_acquire(m)
                pt.prefetch_tensormap(m)
                pt.mbarrier_arrive_expect_tx(bar, 4096)
                pt.tma_load_2d(base, m, 0, 1, bar)
                pt.tma_load_3d(base + uint32(2048), m + uint64(128), 0, 1, 2, bar)
            pt.bar_arrive(1, 256)
        else:
            inc()
            pt.bar_sync(1, 256)
            pt.mbarrier_wait(bar, 0)
            pt.fence_proxy_async()
            pt.mbarrier_arrive(bar)
            out[tid] = pt.mbarrier_wait_bounded(bar, 1, 1000)

    sig = (types.int64, types.Array(types.int32, 1, "C"))
    ptx, _ = cuda.compile_ptx(kern, sig, cc=(9, 0, "a"))
    print(json.dumps(ptx))
""")

NEEDLES = (
    ".target sm_90a",
    "mbarrier.init.shared::cta.b64",
    "fence.mbarrier_init.release.cluster",
    "mbarrier.arrive.expect_tx.shared::cta.b64",
    "mbarrier.arrive.shared::cta.b64",
    "mbarrier.try_wait.parity.shared::cta.b64",
    "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes",
    "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes",
    "fence.proxy.tensormap::generic.acquire.gpu",
    "fence.proxy.tensormap::generic.release.gpu",
    "prefetch.tensormap [",
    "tensormap.replace.tile.global_address.global.b1024.b64",
    "ld.global.v2.b64",
    "st.global.v2.b64",
    "fence.proxy.async.shared::cta",
    "setmaxnreg.dec.sync.aligned.u32 24",
    "setmaxnreg.inc.sync.aligned.u32 240",
    "bar.sync ",
    "bar.arrive ",
)


def compile_ptx_of(script):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_intrinsic_emits_its_instruction():
    ptx = compile_ptx_of(_SCRIPT)
    missing = [n for n in NEEDLES if n not in ptx]
    assert not missing, missing
    # the wait loop's label is scoped to its asm block; the loop branches back to it
    assert "@!P bra WAIT_LOOP" in ptx
    assert "0x989680" in ptx                                   # the suspend-time hint
    assert ptx.count("ld.global.v2.b64") == 8 == ptx.count("st.global.v2.b64")  # one map
    assert "@P bra BWAIT" in ptx and "selp.u32" in ptx      # the bounded wait's loop


@pytest.mark.parametrize("n", [16, 20, 260, 7.5])
def test_setmaxnreg_rejects_bad_counts(n):
    from attn_numba.kernels import ptx_tma
    with pytest.raises(ValueError, match="setmaxnreg"):
        ptx_tma.setmaxnreg_dec(n)


def ptxas(ptx, tmp_path, name="k"):
    """Assemble ``ptx`` for sm_90a with the CPU's ptxas (its ``.version`` line lowered to 8.7:
    NVVM here writes 9.5, newer than ptxas 13.0 reads); returns (returncode, stderr text)."""
    import re
    import shutil
    exe = shutil.which("ptxas") or "/usr/local/cuda-13.0/bin/ptxas"
    if not os.path.exists(exe):
        pytest.skip("no ptxas on this machine")
    src = tmp_path / f"{name}.ptx"
    src.write_text(re.sub(r"^\.version \S+", ".version 8.7", ptx, flags=re.M))
    proc = subprocess.run([exe, "-arch=sm_90a", "-v", str(src), "-o", str(tmp_path / "k.cubin")],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr + proc.stdout


def test_intrinsics_assemble_for_sm90a(tmp_path):
    rc, log = ptxas(compile_ptx_of(_SCRIPT), tmp_path)
    assert rc == 0, log[-3000:]
