"""Every kernel in the registry against the float64 reference, on fresh random inputs, with
poisoned outputs (every element must be written). Runs on the simulator at small sizes; the
same cases run on a GPU when one is present (tests/test_gpu.py adds the log's sizes)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import attn_numba
from attn_numba import interface, kernels
from attn_numba.compile_check import kernel_targets
from attn_numba.problem import Problem
from attn_numba.testing import check_mha_fwd, check_mha_varlen_fwd, random_qkv, random_varlen

from conftest import SIM

KERNELS = attn_numba.available_kernels()

# (batch, sq, sk, H, Hkv, D, dtype, window, causal)
CASES = [
    (2, 17, 17, 4, 1, 16, np.float16, (-1, -1), False),   # GQA 4, dense
    (1, 9, 23, 8, 1, 16, np.float32, (4, 0), False),      # GQA 8, sq < sk, (W, 0)
    (2, 23, 9, 4, 4, 8, np.float16, (-1, -1), True),      # sq > sk causal: rows with no key
    (1, 1, 1, 2, 1, 8, np.float32, (-1, -1), False),      # seq_len 1
    (1, 13, 13, 2, 2, 8, np.float16, (0, 0), False),      # each row sees only its diagonal key
    (1, 33, 33, 4, 2, 16, np.float16, (5, 5), True),      # window + causal
    (1, 20, 31, 2, 1, 8, np.float32, (3, 7), False),      # window, sq < sk
]


def _problem_for(q, k, dtype, window, causal, kernel):
    b, sq, h, d = q.shape
    _, sk, hkv, _ = k.shape
    left, right = attn_numba.normalize_window(window, causal)
    return Problem(batch=b, total_q=b * sq, total_k=b * sk, max_seqlen_q=sq, max_seqlen_k=sk,
                   num_heads=h, num_kv_heads=hkv, head_size=d, dtype=np.dtype(dtype),
                   softmax_scale=1.0, window_left=left, window_right=right, causal=causal,
                   lse_batched=True, on_simulator=SIM)


def _skip_unsupported(kernel, problem):
    reason = kernels.get(kernel).supports(problem)
    if reason:
        pytest.skip(f"{kernel} does not run this case: {reason}")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-sq{c[1]}-sk{c[2]}-h{c[3]}/{c[4]}"
                         f"-d{c[5]}-{np.dtype(c[6]).name}-w{c[7][0]},{c[7][1]}-c{int(c[8])}")
def test_mha_fwd_matches_reference(rng, kernel, case):
    b, sq, sk, h, hkv, d, dtype, window, causal = case
    q, k, v = random_qkv(rng, b, sq, sk, h, hkv, d, dtype)
    _skip_unsupported(kernel, _problem_for(q, k, dtype, window, causal, kernel))
    check_mha_fwd(q, k, v, kernel, causal=causal, window_size=window)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("lens_q,lens_k,window,causal", [
    ([3, 0, 7, 5], [4, 6, 0, 9], (-1, -1), False),   # zero-length q and k sequences
    ([5, 8, 1], [5, 3, 12], (2, 0), True),
    ([0, 0], [0, 4], (-1, -1), False),                # no query rows at all
    ([6, 2], [6, 2], (1, 1), False),
])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_mha_varlen_fwd_matches_reference(rng, kernel, lens_q, lens_k, window, causal, dtype):
    q, k, v, cu_q, cu_k = random_varlen(rng, lens_q, lens_k, 4, 2, 16, dtype)
    left, right = attn_numba.normalize_window(window, causal)
    p = Problem(batch=len(lens_q), total_q=int(cu_q[-1]), total_k=int(cu_k[-1]),
                max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), num_heads=4, num_kv_heads=2,
                head_size=16, dtype=np.dtype(dtype), softmax_scale=0.25, window_left=left,
                window_right=right, causal=causal, lse_batched=False, on_simulator=SIM)
    _skip_unsupported(kernel, p)
    check_mha_varlen_fwd(q, k, v, cu_q, cu_k, kernel, causal=causal, window_size=window)


@pytest.mark.parametrize("kernel", KERNELS)
def test_head_sizes(rng, kernel):
    """Specialised head sizes, and an awkward one (run or refuse clearly, never wrong)."""
    for d in (64, 128, 256, 40):
        q, k, v = random_qkv(rng, 1, 3, 5, 2, 1, d, np.float16)
        problem = _problem_for(q, k, np.float16, (-1, -1), True, kernel)
        if kernels.get(kernel).supports(problem):
            with pytest.raises(ValueError, match=kernel):
                attn_numba.mha_fwd(q, k, v, causal=True, kernel=kernel)
            continue
        check_mha_fwd(q, k, v, kernel, causal=True)


@pytest.mark.parametrize("kernel", KERNELS)
def test_large_logits_stay_finite(rng, kernel):
    q, k, v = random_qkv(rng, 1, 11, 11, 2, 1, 16, np.float32, scale=60.0)
    _skip_unsupported(kernel, _problem_for(q, k, np.float32, (-1, -1), False, kernel))
    check_mha_fwd(q, k, v, kernel, softmax_scale=1.0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_nan_row_changes_only_that_row(rng, kernel):
    q, k, v = random_qkv(rng, 1, 12, 12, 2, 2, 8, np.float32)
    _skip_unsupported(kernel, _problem_for(q, k, np.float32, (3, 3), False, kernel))
    clean = attn_numba.mha_fwd(q, k, v, window_size=(3, 3), kernel=kernel)
    q2 = q.copy()
    q2[0, 5, 1, 0] = np.nan
    dirty = attn_numba.mha_fwd(q2, k, v, window_size=(3, 3), kernel=kernel)
    mask = np.ones(q.shape[:3], bool)
    mask[0, 5, 1] = False
    np.testing.assert_array_equal(clean[mask], dirty[mask])


def test_auto_picks_a_kernel_that_runs(rng):
    q, k, v = random_qkv(rng, 1, 8, 8, 2, 1, 16, np.float16)
    p = _problem_for(q, k, np.float16, (-1, -1), False, "auto")
    chosen = attn_numba.choose_kernel(p)
    assert chosen.supports(p) is None
    check_mha_fwd(q, k, v, "auto")


def test_device_arrays_in_device_arrays_out(rng):
    from numba import cuda
    q, k, v = random_qkv(rng, 1, 7, 7, 2, 1, 8, np.float32)
    out = attn_numba.mha_fwd(cuda.to_device(q), cuda.to_device(k), cuda.to_device(v), kernel="naive")
    assert not isinstance(out, np.ndarray) and out.shape == q.shape
    np.testing.assert_array_equal(out.copy_to_host(), attn_numba.mha_fwd(q, k, v, kernel="naive"))


def test_repeated_calls_do_not_compile_again(rng):
    """The number of compiled specialisations and factory builds stays constant."""
    q, k, v = random_qkv(rng, 1, 5, 5, 2, 1, 16, np.float16)

    def snapshot():
        state = {}
        for name in KERNELS:
            mod = kernels.get(name)
            for fname, fn, *_ in kernel_targets(mod):
                state[(name, fname)] = len(getattr(fn, "overloads", {}))
            for attr in dir(mod):
                info = getattr(getattr(mod, attr), "cache_info", None)
                if callable(info):
                    state[(name, attr)] = info().misses
        return state

    attn_numba.mha_fwd(q, k, v, kernel="auto")
    before = snapshot()
    for _ in range(3):
        attn_numba.mha_fwd(q, k, v, kernel="auto")
    assert snapshot() == before


_ONE_PTX = textwrap.dedent("""
    import json, re
    import numpy as np
    from numba import cuda
    from attn_numba import kernels
    from attn_numba.compile_check import targets
    HOPPER = ("flash_wgmma", "flash_ws")  # sm_90a kernels (wgmma, TMA); the others sm_80
    rows = []
    for name in kernels.available():
        label, fn, sig = targets(kernels.get(name), 64, np.float16)[0]
        ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0, "a") if name in HOPPER else (8, 0))
        rows.append(dict(kernel=name, func=label, entry=".entry" in ptx,
                         f64_ops=len(re.findall(r"\\.f64\\b", ptx))))
    print(json.dumps(rows))
""")


def test_each_kernel_compiles_one_specialisation_to_ptx():
    """The quick run's real compile: one specialisation per kernel (head size 64, float16,
    the kernel's first launch), the simulator off. The full run compiles them all (below)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    res = subprocess.run([sys.executable, "-c", _ONE_PTX], env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0 and res.stdout.strip(), res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["kernel"] for r in rows] == KERNELS
    assert all(r["entry"] for r in rows), rows
    assert not [r for r in rows if r["f64_ops"]], rows


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_compiles_to_ptx_for_sm80_and_sm90(kernel):
    """The simulator runs Python; this compiles each specialisation of each kernel for real
    (no GPU needed): for sm_80 and sm_90, the Hopper-only kernels for sm_90a (one process
    per kernel, so that a parallel run spreads them)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    res = subprocess.run([sys.executable, "-m", "attn_numba.compile_check", "--json",
                          "--kernels", kernel], env=env, capture_output=True, text=True,
                         timeout=1800)
    assert res.stdout.strip(), res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert rows and {r["kernel"] for r in rows} == {kernel}
    hopper = kernel in ("flash_wgmma", "flash_ws")
    assert {r["cc"] for r in rows} == ({"9.0a"} if hopper else {"8.0", "9.0"}), rows
    failed = [r for r in rows if not r["ok"]]
    assert not failed, failed
    # no kernel silently computes in float64
    assert not [r for r in rows if r["f64_ops"]], [r for r in rows if r["f64_ops"]]
