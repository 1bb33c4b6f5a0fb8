"""The backward benchmark's pieces that need no GPU: counts, the math-path reference, the
gradient rule, records from NVBench states, the merge, the CLI's kernel list."""
import argparse

import numpy as np
import pytest

from attn_numba.bench import backward as B
from attn_numba.bench import cli
from attn_numba.bench.grid import Config, derived

torch = pytest.importorskip("torch")

CFG = Config(1, 512, 32, 8, 128, 128, 128, 0)


def test_flops_are_five_matmuls_per_pair():
    fwd = derived(CFG)["flops"]
    assert B.flops(CFG, "bwd") * 2 == 5 * fwd
    assert B.flops(CFG, "fwd+bwd") * 2 == 7 * fwd


def _sdpa_grads(q, k, v, dout, left, right, scale):
    """Autograd of SDPA with K, V repeated and an explicit mask (float64, CPU)."""
    sq, sk, g = q.shape[1], k.shape[1], q.shape[2] // k.shape[2]
    i = torch.arange(sq)[:, None] + sk - sq
    j = torch.arange(sk)[None, :]
    mask = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        mask &= j >= i - left
    if right >= 0:
        mask &= j <= i + right
    qq, kk, vv = (x.detach().double().requires_grad_() for x in (q, k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", qq, kk.repeat_interleave(g, 2)) * scale
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
    o = torch.einsum("bhqk,bkhd->bqhd", p, vv.repeat_interleave(g, 2))
    return torch.autograd.grad(o, (qq, kk, vv), dout.double())


@pytest.mark.parametrize("sq,sk,left,right", [(9, 9, 2, 0), (5, 11, -1, 0), (11, 5, 1, 1)])
def test_math_grads_match_autograd_with_repeated_kv(sq, sk, left, right):
    g = torch.Generator().manual_seed(sq * 100 + sk)
    q, dout = (torch.randn(1, sq, 4, 8, generator=g) for _ in range(2))
    k, v = (torch.randn(1, sk, 2, 8, generator=g) for _ in range(2))
    got = B.math_grads(q, k, v, dout, left, right, 0.3, torch.float64)
    want = _sdpa_grads(q, k, v, dout, left, right, 0.3)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.float().numpy(), rtol=1e-5, atol=1e-6)
    assert all(bool(x.isfinite().all()) for x in got)


def test_gradient_rule_fails_what_it_should():
    ref = tuple(torch.ones(3) for _ in range(3))
    good = tuple(torch.ones(3) + 1e-3 for _ in range(3))
    assert B.check_grads(good, ref, (1e-3, 1e-3, 1e-3))["ok"]
    bad = (torch.ones(3) + 1e-2, *good[1:])
    res = B.check_grads(bad, ref, (1e-3, 1e-3, 1e-3))
    assert not res["ok"] and res["max_err"]["dq"] > res["tol"]["dq"]
    nan = (torch.full((3,), float("nan")), *good[1:])
    assert not B.check_grads(nan, ref, (1.0, 1.0, 1.0))["ok"]


def _state(kernel, pass_, seq_len, t):
    point = {"Kernel": kernel, "Pass": pass_, **dict(CFG.axes(), seq_len=seq_len)}
    return point, {"nv/cold/time/gpu/mean": t, "nv/cold/sample_size": 7}, t is None, \
        None if t else "skipped: why"


def test_records_and_merge():
    states = [_state("flash_tc", "bwd", 512, 1e-4), _state("flexattention", "fwd+bwd", 512, None)]
    cfg_key = Config(**dict(CFG.axes())).key()
    results = {("flash_tc", "bwd", cfg_key): {"check": {"ok": True}, "exec_mode": "cold"}}
    recs = B.records(states, results)
    assert recs[0]["pass"] == "bwd" and recs[0]["check"] == {"ok": True}
    assert recs[0]["tflops"] == pytest.approx(B.flops(CFG, "bwd") / 1e-4 / 1e12)
    assert recs[1]["skipped"] and recs[1]["gpu_time_s"] is None and recs[1]["samples"] == 7
    old = {"records": [dict(recs[0], gpu_time_s=9.0), {**recs[0], "pass": "fwd+bwd"}]}
    new = B.merge(old, {"records": [recs[0]], "nvbench": {"json": "b.json"}})
    assert len(new["records"]) == 2 and new["records"][-1]["gpu_time_s"] == 1e-4


def test_cli_backward_kernel_list():
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    kernels, grid = cli.resolve(p.parse_args(["--backward", "--kernels", "flash_tc,sdpa"]))
    assert kernels == ["flash_tc", "sdpa"] and grid["seq_len"][-1] == 8192
    with pytest.raises(ValueError, match="naive"):
        cli.resolve(p.parse_args(["--backward", "--kernels", "naive"]))
    with pytest.raises(ValueError, match="--simulate"):
        cli.resolve(p.parse_args(["--backward", "--simulate"]))
