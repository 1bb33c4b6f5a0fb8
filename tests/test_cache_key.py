"""Numba's disk-cache key of every kernel is reproducible: the same before and after the kernel
compiles, and the same in a new process.

``Cache.load_overload`` computes the key before compiling and ``save_overload`` after, from a
pickle of the kernel's closure. When compiling changed that pickle (intrinsics pickled with a
random uuid, or by value with llvmlite types that cache their string form once used), a warm
cache never hit: flash_wgmma's first call in a new process took 2.5 s on the H200 with a warm
cache (results/h200/first_call.json, run 13), against 0.03 s for flash_tc. This test computes
Numba's own key (``CUDACache._index_key``) on the CPU, with the simulator off, for every
forward kernel (fp16, bf16) and every backward kernel (fp16) at head size 128.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba import cuda
    from numba.cuda.dispatcher import CUDACache
    from attn_numba import kernels
    from attn_numba.compile_check import targets

    class Codegen:  # the key's codegen part is the device's; only the closure matters here
        def magic_tuple(self):
            return ("test",)

    compile_too = sys.argv[1] == "compile"
    keys = {}
    # the forward kernels in fp16 and bf16; the backward's (bwd/...) in fp16
    mods = [(name, kernels.get(name), True) for name in kernels.available()]
    mods += [("bwd/" + name, kernels.get_bwd(name), False)
             for name in kernels.available(backward=True)]
    for name, mod, fwd in mods:
        cc = (9, 0, "a") if name.split("/")[-1] in ("flash_wgmma", "flash_ws") else (8, 0)
        bf16 = ("bfloat16",) if fwd and name in ("flash_tc", "flash_wgmma", "flash_ws") else ()
        for dtype in (np.float16,) + bf16:
            try:
                tgts = targets(mod, 128, dtype)
            except NotImplementedError:
                continue
            for label, fn, sig in tgts:
                cache = CUDACache(fn)
                before = str(cache._index_key(tuple(sig), Codegen()))
                after = None
                if compile_too:
                    cuda.compile_ptx(fn, sig, cc=cc)
                    after = str(cache._index_key(tuple(sig), Codegen()))
                keys[f"{name}/{label}/{dtype if isinstance(dtype, str) else 'float16'}"] = [
                    before, after]
    print(json.dumps(keys))
""")


def _run(mode):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, mode], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cache_key_is_stable_across_compile_and_processes():
    first = _run("compile")
    second = _run("keys")
    assert any(k.startswith("flash_wgmma/") for k in first), sorted(first)
    assert any(k.startswith("flash_tc/") for k in first), sorted(first)
    assert any(k.startswith("bwd/flash_wgmma/") for k in first), sorted(first)
    assert any(k.startswith("bwd/flash_tc/") for k in first), sorted(first)
    changed = [k for k, (before, after) in first.items() if before != after]
    assert not changed, f"compiling changed the disk-cache key of {changed}"
    differs = [k for k in first if second.get(k, [None])[0] != first[k][0]]
    assert not differs, f"a new process computes another disk-cache key for {differs}"
