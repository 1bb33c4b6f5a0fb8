"""The compile-time guardrail (attn_numba.warmup): repeated calls never compile again."""
import numpy as np
import pytest

import attn_numba
from attn_numba import testing, warmup
from attn_numba.compile_check import kernel_targets
from attn_numba.kernels import v1_naive

from conftest import SIM


def _tiny(rng, dtype=np.float32, S=24, H=2, HKV=1, D=16):
    return testing.random_qkv(rng, 1, S, S, H, HKV, D, dtype)


def test_repeated_calls_build_no_new_specializations(rng):
    """Factories are not re-run and no dispatcher gains overloads after the first call."""
    kw = dict(kernels=("naive",), dtypes=(np.float32,), head_sizes=(16,), num_heads=2,
              num_kv_heads=1, seqlen=8)
    warmup.warmup(**kw)
    before = warmup.specialization_count()
    disp_before = {label: d for label, d, *_ in kernel_targets(v1_naive)}
    warmup.warmup(**kw)
    q, k, v = _tiny(rng)
    for _ in range(2):
        testing.check_mha_fwd(q, k, v, "naive", window_size=(4, 2))
    assert warmup.specialization_count() == before
    assert disp_before == {label: d for label, d, *_ in kernel_targets(v1_naive)}


def test_warmup_reports_each_combination():
    r = warmup.warmup(kernels=("naive",), dtypes=(np.float32,), head_sizes=(16, 32),
                      num_heads=2, num_kv_heads=1, seqlen=4)
    assert [(c["kernel"], c["head_size"]) for c in r["calls"]] == [("naive", 16), ("naive", 32)]
    assert all(c["skipped"] is None and c["seconds"] >= 0 for c in r["calls"])
    assert r["total_s"] >= sum(c["seconds"] for c in r["calls"])


def test_warmup_skips_what_a_kernel_cannot_run():
    r = warmup.warmup(kernels=("naive",), dtypes=(np.float32,), head_sizes=(300,),
                      num_heads=1, num_kv_heads=1, seqlen=2)
    assert r["calls"][0]["skipped"] and "head_size" in r["calls"][0]["skipped"]


def test_no_new_compiles_raises_on_a_compile():
    with pytest.raises(warmup.CompileInTimedRegion, match="fake_kernel"):
        with warmup.no_new_compiles("the test") as c:
            c.events.append(("fake_kernel", 0.5))  # what the compile_cuda wrapper records
    with warmup.no_new_compiles() as c:
        pass
    assert c.count == 0


def test_warmup_async_finishes(rng):
    th = warmup.warmup_async(kernels=("naive",), dtypes=(np.float32,), head_sizes=(16,),
                             num_heads=2, num_kv_heads=1, seqlen=4)
    th.join(timeout=120)
    assert not th.is_alive() and th.result["calls"][0]["skipped"] is None


@pytest.mark.gpu
def test_gpu_second_call_does_not_compile(rng):
    from numba import cuda
    q, k, v = (cuda.to_device(x) for x in _tiny(rng, np.float16, S=64, H=4, HKV=2, D=64))
    warmup.warmup(kernels=("naive",), dtypes=(np.float16,), head_sizes=(64,))
    n = len(v1_naive.naive_kernel.overloads)
    with warmup.no_new_compiles() as c:
        for _ in range(3):
            attn_numba.mha_fwd(q, k, v, window_size=(8, 8), kernel="naive")
        cuda.synchronize()
    assert c.count == 0
    assert len(v1_naive.naive_kernel.overloads) == n


@pytest.mark.gpu
def test_gpu_fresh_jit_is_caught(rng):
    from numba import cuda
    with pytest.raises(warmup.CompileInTimedRegion):
        with warmup.no_new_compiles():
            cuda.jit(v1_naive.naive_kernel.py_func).compile(
                v1_naive.compile_targets(64, np.float16)[0][2])


@pytest.mark.gpu
def test_gpu_fast_load_gives_a_correct_kernel(rng):
    res = warmup.fast_load(("naive",), (np.float16,), (64,))
    assert res and all(r["how"] in ("in-memory", "fast-cache", "compile") for r in res)
    q, k, v = _tiny(rng, np.float16, S=40, H=4, HKV=2, D=64)
    with warmup.count_compiles() as c:
        testing.check_mha_fwd(q, k, v, "naive", window_size=(8, 3))
    assert c.count == 0


def test_fast_load_and_compile_eager_are_empty_on_the_simulator():
    if not SIM:
        pytest.skip("simulator only")
    assert warmup.fast_load() == [] and warmup.compile_eager() == []
