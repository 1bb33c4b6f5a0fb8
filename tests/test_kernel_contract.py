"""Every registered kernel module keeps the contract of attn_numba.kernels.KernelModule:
NAME matches its registry name, supports / plan / compile_targets exist (and scratch for a
backward module), plans are Plans whose arrays the call path can supply."""
import numpy as np
import pytest

from attn_numba import kernels
from attn_numba.kernels import BWD_ARRAYS, FWD_ARRAYS, KernelModule, Plan, Scratch
from attn_numba.problem import Problem

FWD = [n for n in kernels.KERNEL_NAMES if kernels.get(n) is not None]
BWD = [n for n in kernels.BWD_KERNEL_NAMES if kernels.get_bwd(n) is not None]


def _problem(dtype=np.float16, head_size=64):
    return Problem(batch=2, total_q=40, total_k=48, max_seqlen_q=20, max_seqlen_k=24,
                   num_heads=8, num_kv_heads=2, head_size=head_size, dtype=np.dtype(dtype),
                   softmax_scale=0.125, window_left=16, window_right=0, causal=True,
                   lse_batched=True, on_simulator=False)


def test_one_registry_of_names():
    assert kernels.KERNEL_NAMES == tuple(kernels._MODULES)
    assert kernels.BWD_KERNEL_NAMES == tuple(kernels._BWD_MODULES)
    assert kernels.available() == FWD and kernels.available(backward=True) == BWD
    assert BWD, "no backward kernel module in this build"


@pytest.mark.parametrize("name,backward", [(n, False) for n in FWD] + [(n, True) for n in BWD])
def test_module_keeps_the_contract(name, backward):
    mod = kernels.get_bwd(name) if backward else kernels.get(name)
    assert isinstance(mod, KernelModule)
    assert mod.NAME == name
    assert not hasattr(mod, "launch"), "launch_plans is the one launcher"
    names = set(BWD_ARRAYS if backward else FWD_ARRAYS)
    if backward:
        assert callable(mod.scratch)
    problem = _problem()
    why = mod.supports(problem)
    if why is not None and mod.supports(_problem(np.float32)) is None:
        problem, why = _problem(np.float32), None
    if why is not None:
        pytest.skip(f"{name} cannot plan here: {why}")
    scratch = kernels.scratch_of(mod, problem)
    assert all(isinstance(s, Scratch) for s in scratch)
    names |= {s.name for s in scratch}
    plans = mod.plan(problem)
    assert plans and all(isinstance(p, Plan) for p in plans)
    for p in plans:
        assert set(p.arrays) <= names, f"{name}: a plan names arrays the call lacks"
        assert len(p.views) <= len(p.arrays)
    targets = mod.compile_targets(problem.head_size, problem.dtype)
    assert targets and all(len(t) == 3 and isinstance(t[0], str) for t in targets)
