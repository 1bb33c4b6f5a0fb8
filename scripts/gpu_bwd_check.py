"""One GPU run for the tensor-core backward (bwd_flash_tc): a compact correctness sweep
against torch float64 autograd of the math path, then timing of the backward alone and of
forward + backward, ours against FlexAttention. Everything lands in ``$OUT``.

    OUT=/some/dir python scripts/gpu_bwd_check.py [--quick] [--no-time] [--seqs 1024,8192]
        [--variants] [--no-atomic]

* correctness: FlashAttention's rule, each of dq, dk, dv: error against float64 at most twice
  the error of torch's own math path in the input dtype, plus 1e-4; outputs start as NaN;
  two runs bit-identical. Cases: the log's shape at 512 and 2048 tokens, sizes 1/97/1025,
  sq != sk, GQA 1/4/8, windows (-1,-1), (0,0), (128,0), causal, varlen with an empty
  sequence, fp16 and bf16, head sizes 64/128/256.
* the atomic-dQ variant (``deterministic=False``): the same rule on a subset of the cases
  (dk and dv still bit-identical between two runs; whether dq is, is recorded).
* timing (triton ``do_bench``, median ms): the log's shape (1 x S tokens, 32 / 8 heads,
  D = 128, window (128, 128), fp16), S = 1024..8192, causal 0/1: ours (flash_tc forward +
  flash_tc backward, deterministic and atomic-dQ: "what determinism costs", with the two
  variants' largest gradient difference) and FlexAttention (compiled, block mask, as
  attn_numba.bench.cases). Timed calls do not poison their outputs (run 21's did: its
  backward times include a NaN fill of dq, dk, dv, about 0.1 GB at 8192 tokens).

Writes ``$OUT/bwd_check.json`` after every stage and prints a table last. The helpers
(:func:`run_ours`, :func:`torch_grads`, :func:`check_case`) are also used by
tests/test_gpu_bwd.py.
"""
import argparse
import json
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LOG = dict(nh=32, hkv=8, d=128, window=(128, 128))
#: the backward kernel checked and timed, and the forward that makes its out / lse
#: (``--kernel``, ``--fwd-kernel``)
KERNEL = {"bwd": "flash_tc", "fwd": "flash_tc"}


def _bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def _np_dtype(tdtype):
    import torch
    return np.dtype(np.float16) if tdtype == torch.float16 else _bf16()


def _direct_bwd(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, left, right, causal,
                deterministic=True, setup_only=False, **variant):
    """The three plans of bwd_flash_tc (``variant``: ``plan``'s tile overrides) launched
    through ``kernels.launch_plans`` on torch's current stream (varlen layout; lse
    (H, total_q))."""
    import torch
    from numba import cuda
    from attn_numba.kernels import get_bwd
    tc = get_bwd(KERNEL["bwd"])        # flash_tc by default; its plan() takes ``variant``
    from attn_numba.kernels.occupancy import opt_in_shared
    from attn_numba.kernels import launch_plans, plan_args
    from attn_numba.problem import Problem
    total_q, nh, d = q.shape
    problem = Problem(batch=int(cu_q.numel()) - 1, total_q=total_q, total_k=k.shape[0],
                      max_seqlen_q=mq, max_seqlen_k=mk, num_heads=nh, num_kv_heads=k.shape[1],
                      head_size=d, dtype=_np_dtype(q.dtype), softmax_scale=scale,
                      window_left=left, window_right=right, causal=causal, lse_batched=False,
                      on_simulator=False, deterministic=deterministic)
    dq, dk, dv = (torch.full_like(x, float("nan")) for x in (q, k, v))
    scratch = {sc.name: torch.empty(sc.shape, dtype=torch.float32, device=q.device)
               for sc in tc.scratch(problem)}
    as16 = lambda t: cuda.as_cuda_array(t.view(torch.int16))  # noqa: E731
    arrays = dict(dout=as16(dout), q=as16(q), k=as16(k), v=as16(v), out=as16(out),
                  lse=cuda.as_cuda_array(lse.view(1, nh, total_q)), dq=as16(dq), dk=as16(dk),
                  dv=as16(dv), cu_seqlens_q=cuda.as_cuda_array(cu_q),
                  cu_seqlens_k=cuda.as_cuda_array(cu_k),
                  **{n: cuda.as_cuda_array(t) for n, t in scratch.items()})
    plans = tc.plan(problem, **variant)
    for p in plans:   # the launch's exact argument types get the shared-memory opt-in
        args = plan_args(p, arrays)
        opt_in_shared(p.kernel, tuple(p.kernel.typeof_pyval(a) for a in args), p.shared)
    if setup_only:      # (launch, outputs): time the launches alone, on prepared buffers
        stream = torch.cuda.current_stream().cuda_stream
        return (lambda: launch_plans(plans, arrays, stream)), (dq, dk, dv)
    launch_plans(plans, arrays, torch.cuda.current_stream().cuda_stream)
    return dq, dk, dv


def run_ours(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, causal, window,
             deterministic=True, poison=True, kernel=None):
    """(dq, dk, dv) of our flash_tc backward, varlen layout: ``attn_numba.mha_varlen_bwd``
    where main has it, else the plans directly. ``deterministic=False``: the atomic-dQ
    variant. ``poison``: new outputs and scratch start as NaN (checks; off when timing, where
    the NaN fill of the atomic variant's 134 MB ``dq_accum`` would cost it ~0.04 ms)."""
    import contextlib
    import attn_numba
    from attn_numba.problem import normalize_window
    if hasattr(attn_numba, "mha_varlen_bwd"):
        from attn_numba.testing import poisoned_outputs
        kw = {} if deterministic else dict(deterministic=False)
        with poisoned_outputs() if poison else contextlib.nullcontext():
            return attn_numba.mha_varlen_bwd(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk,
                                             softmax_scale=scale, causal=causal,
                                             window_size=window, kernel=kernel or KERNEL["bwd"],
                                             **kw)
    left, right = normalize_window(window, causal)
    return _direct_bwd(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, left, right, causal,
                       deterministic)


def run_fwd(q, k, v, cu_q, cu_k, mq, mk, scale, causal, window):
    import attn_numba
    return attn_numba.mha_varlen_fwd(q, k, v, cu_q, cu_k, max_seqlen_q=mq, max_seqlen_k=mk,
                                     softmax_scale=scale, causal=causal, window_size=window,
                                     kernel=KERNEL["fwd"], return_lse=True)


def torch_grads(dout, q, k, v, cu_q, cu_k, scale, left, right, dtype):
    """(dq, dk, dv) of torch autograd through the math path computed in ``dtype`` (float64:
    the reference; the input dtype: torch's own low-precision error), varlen layout."""
    import torch
    q, k, v, dout = (x.detach().to(dtype) for x in (q, k, v, dout))
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    g = q.shape[1] // k.shape[1]
    outs = []
    for b in range(cu_q.numel() - 1):
        a0, a1, c0, c1 = (int(x) for x in (cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]))
        sq, sk = a1 - a0, c1 - c0
        if sq == 0:
            continue
        qb = q[a0:a1].transpose(0, 1)                                   # (H, sq, D)
        kb = k[c0:c1].repeat_interleave(g, dim=1).transpose(0, 1)
        vb = v[c0:c1].repeat_interleave(g, dim=1).transpose(0, 1)
        i = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
        j = torch.arange(sk, device=q.device)[None, :]
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
        if left >= 0:
            mask &= j >= i - left
        if right >= 0:
            mask &= j <= i + right
        seen = mask.any(1, keepdim=True)
        s = torch.matmul(qb, kb.transpose(1, 2)) * scale
        s = torch.where(seen, s.masked_fill(~mask, float("-inf")), torch.zeros_like(s))
        p = torch.softmax(s, dim=-1) * seen
        outs.append((a0, a1, torch.matmul(p, vb).transpose(0, 1)))
    loss = sum((o * dout[a0:a1]).sum() for a0, a1, o in outs) if outs else None
    if loss is None or not loss.requires_grad:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    return torch.autograd.grad(loss, (q, k, v), allow_unused=True)


def _err(a, b):
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def make_case(seed, seqlens_q, seqlens_k, nh, hkv, d, tdtype, device="cuda"):
    import torch
    gen = torch.Generator(device=device).manual_seed(seed)
    tq, tk = sum(seqlens_q), sum(seqlens_k)
    rnd = lambda *s: torch.randn(*s, generator=gen, device=device).to(tdtype)  # noqa: E731
    cu = lambda ls: torch.tensor(np.concatenate([[0], np.cumsum(ls)]), dtype=torch.int32,  # noqa
                                 device=device)
    return (rnd(tq, nh, d), rnd(tk, hkv, d), rnd(tk, hkv, d), rnd(tq, nh, d), cu(seqlens_q),
            cu(seqlens_k), max(seqlens_q), max(seqlens_k))


def check_case(seed, seqlens_q, seqlens_k, nh, hkv, d, tdtype, window, causal,
               deterministic=True, kernel=None):
    """Run one case; returns a dict with ``ok`` and the errors (ours vs torch low precision,
    per gradient) and ``deterministic`` (bit-identical dq, dk, dv over two runs; for the
    atomic-dQ variant, ``deterministic=False``, dk and dv only, and ``dq_identical``)."""
    import torch
    from attn_numba.problem import normalize_window
    q, k, v, dout, cu_q, cu_k, mq, mk = make_case(seed, seqlens_q, seqlens_k, nh, hkv, d, tdtype)
    scale = d ** -0.5
    left, right = normalize_window(window, causal)
    out, lse = run_fwd(q, k, v, cu_q, cu_k, mq, mk, scale, causal, window)
    ours = run_ours(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, causal, window,
                    deterministic, kernel=kernel)
    again = run_ours(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, causal, window,
                     deterministic, kernel=kernel)
    torch.cuda.synchronize()
    ref = torch_grads(dout, q, k, v, cu_q, cu_k, scale, left, right, torch.float64)
    low = torch_grads(dout, q, k, v, cu_q, cu_k, scale, left, right, tdtype)
    res = dict(seqlens_q=list(seqlens_q), seqlens_k=list(seqlens_k), nh=nh, hkv=hkv, d=d,
               dtype=str(tdtype), window=list(window), causal=causal, ok=True,
               variant="deterministic" if deterministic else "atomic_dq",
               kernel=kernel or KERNEL["bwd"],
               deterministic=all(torch.equal(a, b) for a, b in
                                 zip(ours[0 if deterministic else 1:],
                                     again[0 if deterministic else 1:])),
               dq_identical=torch.equal(ours[0], again[0]))
    for name, a, r, lo in zip(("dq", "dk", "dv"), ours, ref, low):
        e, el = _err(a, r), _err(lo, r)
        finite = bool(torch.isfinite(a).all())
        res[name] = dict(err=e, torch_err=el, finite=finite)
        res["ok"] &= finite and e <= 2 * el + 1e-4
    res["ok"] &= res["deterministic"]
    return res


def sweep_cases(quick=False):
    import torch
    f16, bf16 = torch.float16, torch.bfloat16
    L = LOG
    cases = [  # seqlens_q, seqlens_k, nh, hkv, d, dtype, window, causal
        ([512], [512], L["nh"], L["hkv"], 128, f16, L["window"], False),
        ([2048], [2048], L["nh"], L["hkv"], 128, f16, L["window"], True),
        ([1], [1], 4, 1, 128, f16, (-1, -1), False),
        ([97], [1025], 8, 1, 64, f16, (-1, -1), True),
        ([1025], [97], 8, 8, 128, bf16, (-1, -1), False),
        ([1025], [1025], 8, 2, 256, f16, (128, 0), False),
        ([513], [700], 4, 4, 128, bf16, (0, 0), True),
        ([300, 0, 1025, 1, 64], [280, 17, 1025, 0, 700], 8, 2, 128, f16, (128, 128), True),
        ([300, 0, 1025, 1, 64], [280, 17, 1025, 0, 700], 8, 1, 64, bf16, (-1, -1), False),
        ([777], [777], 8, 1, 256, bf16, (-1, -1), True),
        ([97], [97], 8, 8, 72, f16, (0, 0), False),
    ]
    if KERNEL["bwd"] == "flash_wgmma":
        from attn_numba.kernels.bwd_flash_wgmma import HEAD_SIZES
        cases = [c for c in cases if c[4] in HEAD_SIZES]
    return cases[::3] if quick else cases


def atomic_cases(quick=False):
    """The cases the atomic-dQ variant is checked on: the log's shape causal, varlen with
    empty sequences (GQA 4, window, causal; both D = 128 fp16, the timed specialisation),
    and head size 256 in bf16 (two warps per 16 keys) with --quick (two new compiles); all
    of them otherwise."""
    cases = sweep_cases(False)
    return [cases[i] for i in (1, 7, 9)] if quick else cases


# --------------------------------------------------------------------------- timing

def _time_cases(seq_lens, causals, atomic=True):
    import torch
    from triton.testing import do_bench
    from attn_numba.bench.torch_cases import _compiled_flex, _window_mask_mod
    from torch.nn.attention.flex_attention import create_block_mask
    rows = []
    for s in seq_lens:
        for causal in causals:
            left, right = (128, 0) if causal else (128, 128)
            q, k, v, dout, cu_q, cu_k, mq, mk = make_case(1, [s], [s], LOG["nh"], LOG["hkv"],
                                                           LOG["d"], torch.float16)
            scale = LOG["d"] ** -0.5
            win = LOG["window"]
            out, lse = run_fwd(q, k, v, cu_q, cu_k, mq, mk, scale, causal, win)

            def bwd(det=True):
                return run_ours(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, causal,
                                win, det, poison=False)

            def fwd_bwd(det=True):
                o, ls = run_fwd(q, k, v, cu_q, cu_k, mq, mk, scale, causal, win)
                return run_ours(dout, q, k, v, o, ls, cu_q, cu_k, mq, mk, scale, causal, win,
                                det, poison=False)
            row = dict(seq_len=s, causal=int(causal), ours_fwd=do_bench(
                lambda: run_fwd(q, k, v, cu_q, cu_k, mq, mk, scale, causal, win),
                return_mode="median"), ours_bwd=do_bench(bwd, return_mode="median"),
                ours_fwd_bwd=do_bench(fwd_bwd, return_mode="median"), kernel=KERNEL["bwd"])
            if KERNEL["bwd"] != "flash_tc":
                row["tc_bwd"] = do_bench(lambda: run_ours(
                    dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, causal, win,
                    poison=False, kernel="flash_tc"), return_mode="median")
                row["tc_max_diff"] = [float((a.float() - b.float()).abs().max()) for a, b in
                                      zip(bwd(), run_ours(dout, q, k, v, out, lse, cu_q, cu_k,
                                                          mq, mk, scale, causal, win,
                                                          poison=False, kernel="flash_tc"))]
            if atomic:
                row["atomic_bwd"] = do_bench(lambda: bwd(False), return_mode="median")
                row["atomic_fwd_bwd"] = do_bench(lambda: fwd_bwd(False), return_mode="median")
                row["determinism_cost_bwd"] = row["ours_bwd"] / row["atomic_bwd"]
                row["atomic_max_diff"] = [float((a.float() - b.float()).abs().max())
                                          for a, b in zip(bwd(True), bwd(False))]
            try:
                bm = create_block_mask(_window_mask_mod(s, s, left, right), B=None, H=None,
                                       Q_LEN=s, KV_LEN=s, device="cuda")
                flex = _compiled_flex()
                qt, kt, vt = (x.view(1, s, -1, LOG["d"]).transpose(1, 2).contiguous()
                              .requires_grad_(True) for x in (q, k, v))
                gt = dout.view(1, s, -1, LOG["d"]).transpose(1, 2).contiguous()
                call = lambda: flex(qt, kt, vt, block_mask=bm, scale=scale,  # noqa: E731
                                    enable_gqa=True)
                o = call()
                row["flex_bwd"] = do_bench(lambda: torch.autograd.grad(
                    o, (qt, kt, vt), gt, retain_graph=True), return_mode="median")
                row["flex_fwd_bwd"] = do_bench(lambda: call().backward(gt),
                                               return_mode="median")
            except Exception as exc:  # noqa: BLE001 - record and go on
                row["flex_error"] = f"{type(exc).__name__}: {exc}"[:300]
            row["fwd_bwd_vs_flex"] = row["ours_fwd_bwd"] / row["flex_fwd_bwd"] \
                if "flex_fwd_bwd" in row else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


#: tile variants of the backward timed at 8192 tokens (``plan``'s dkdv / dq overrides)
VARIANTS = {"default": {}, "dkdv_bm16": dict(dkdv=(64, 16, 2)), "dq_bn64": dict(dq=(64, 64, 2)),
            "one_stage": dict(dkdv=(64, 32, 1), dq=(64, 32, 1))}
#: the same for ``--kernel flash_wgmma`` (bwd_flash_wgmma.plan's options)
WGMMA_VARIANTS = {"default": {}, "overlap": dict(overlap=True), "dq_heads1": dict(heads=1)}


def _variants():
    return WGMMA_VARIANTS if KERNEL["bwd"] == "flash_wgmma" else VARIANTS


def check_variants_exact(quick=True):
    """Each variant's gradients against the default plan's, bit for bit, on sweep cases. A
    variant that adds the same products in the same order (flash_wgmma's ``overlap``) must
    be identical; one that moves tile boundaries (``heads``, which shifts where key tiles
    start) may differ in the last bits:
    ``[{case, variant, identical, max_diff}]``."""
    import torch
    from attn_numba.problem import normalize_window
    rows = []
    for i, (sq_, sk_, nh, hkv, d, tdt, window, causal) in enumerate(sweep_cases(quick)):
        q, k, v, dout, cu_q, cu_k, mq, mk = make_case(300 + i, sq_, sk_, nh, hkv, d, tdt)
        scale = d ** -0.5
        left, right = normalize_window(window, causal)
        out, lse = run_fwd(q, k, v, cu_q, cu_k, mq, mk, scale, causal, window)
        base = _direct_bwd(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, left, right,
                           causal)
        for name, var in _variants().items():
            if not var:
                continue
            g = _direct_bwd(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, left, right,
                            causal, **var)
            torch.cuda.synchronize()
            same = all(torch.equal(a, b) for a, b in zip(g, base))
            diff = max(float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
                       for a, b in zip(g, base))
            rows.append(dict(case=str((sq_, sk_, nh, hkv, d, str(tdt), window, causal)),
                             variant=name, identical=same, max_diff=diff))
            print(("SAME " if same else "DIFF ") + json.dumps(rows[-1]), flush=True)
    return rows


def _time_variants(seq_len=8192):
    """Backward alone through the plans directly, per variant, non-causal log shape; each
    variant's gradients against the default's (max abs difference)."""
    import torch
    from triton.testing import do_bench
    from attn_numba.problem import normalize_window
    q, k, v, dout, cu_q, cu_k, mq, mk = make_case(2, [seq_len], [seq_len], LOG["nh"],
                                                   LOG["hkv"], LOG["d"], torch.float16)
    scale, win = LOG["d"] ** -0.5, LOG["window"]
    left, right = normalize_window(win, False)
    out, lse = run_fwd(q, k, v, cu_q, cu_k, mq, mk, scale, False, win)
    rows, base = [], None
    for name, var in _variants().items():
        # plans, views and buffers prepared once: the timed call is the launches alone
        call, g = _direct_bwd(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk, scale, left,
                              right, False, setup_only=True, **var)
        call()
        base = g if base is None else base
        row = dict(variant=name, config={k_: list(v_) if isinstance(v_, (tuple, list)) else v_
                                         for k_, v_ in var.items()},
                   bwd_ms=do_bench(call, return_mode="median"),
                   max_diff=max(float((a.float() - b.float()).abs().max())
                                for a, b in zip(g, base)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="every third sweep case")
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--no-sweep", action="store_true", help="timing only (no correctness sweep)")
    ap.add_argument("--variants", action="store_true",
                    help="also time the tile variants of VARIANTS at 8192 tokens")
    ap.add_argument("--no-atomic", action="store_true",
                    help="skip the atomic-dQ variant (deterministic=False)")
    ap.add_argument("--seqs", default="1024,2048,4096,8192",
                    help="timed token counts (each costs FlexAttention a compile)")
    ap.add_argument("--kernel", default="flash_tc", help="the backward kernel (mha_bwd's)")
    ap.add_argument("--no-exact", action="store_true",
                    help="with --variants: skip their bit-exactness check against the default")
    ap.add_argument("--fwd-kernel", default="flash_tc", help="the forward making out and lse")
    args = ap.parse_args()
    KERNEL.update(bwd=args.kernel, fwd=args.fwd_kernel)
    if args.kernel != "flash_tc":
        args.no_atomic = True          # the atomic-dQ variant is flash_tc's
    out_dir = os.environ.get("OUT", ".")
    path = os.path.join(out_dir, f"bwd_check_{args.kernel}.json" if args.kernel != "flash_tc"
                        else "bwd_check.json")
    res = dict(started=time.strftime("%Y-%m-%d %H:%M:%S"), sweep=[], timing=[],
               kernel=dict(KERNEL))
    import torch
    res["device"] = torch.cuda.get_device_name()

    def save():
        with open(path, "w") as f:
            json.dump(res, f, indent=1)

    t0 = time.time()
    for i, case in enumerate([] if args.no_sweep else sweep_cases(args.quick)):
        try:
            r = check_case(100 + i, *case)
        except Exception:  # noqa: BLE001
            r = dict(case=str(case), ok=False, error=traceback.format_exc()[-2000:])
        res["sweep"].append(r)
        print(("PASS " if r["ok"] else "FAIL ") + json.dumps(r)[:400], flush=True)
        save()
    res["sweep_s"] = time.time() - t0
    res["atomic_sweep"] = []
    for i, case in enumerate([] if args.no_atomic or args.no_sweep
                             else atomic_cases(args.quick)):
        try:
            r = check_case(200 + i, *case, deterministic=False)
        except Exception:  # noqa: BLE001
            r = dict(case=str(case), ok=False, error=traceback.format_exc()[-2000:])
        res["atomic_sweep"].append(r)
        print(("PASS atomic " if r["ok"] else "FAIL atomic ") + json.dumps(r)[:400], flush=True)
        save()
    res["atomic_sweep_s"] = time.time() - t0 - res["sweep_s"]
    if not args.no_time:
        try:
            res["timing"] = _time_cases([int(x) for x in args.seqs.split(",")],
                                        [False, True], not args.no_atomic)
        except Exception:  # noqa: BLE001
            res["timing_error"] = traceback.format_exc()[-2000:]
        save()
    if args.variants:
        try:
            res["variants_exact"] = [] if args.no_exact else check_variants_exact(args.quick)
        except Exception:  # noqa: BLE001
            res["variants_exact_error"] = traceback.format_exc()[-2000:]
        save()
        try:
            res["variants"] = _time_variants()
        except Exception:  # noqa: BLE001
            res["variants_error"] = traceback.format_exc()[-2000:]
        save()
    npass = sum(r["ok"] for r in res["sweep"])
    print(f"\nsweep {npass}/{len(res['sweep'])} pass  ({res['device']})")
    apass = sum(r["ok"] for r in res["atomic_sweep"])
    print(f"atomic-dQ sweep {apass}/{len(res['atomic_sweep'])} pass")
    print("tokens causal | ours fwd  bwd  fwd+bwd | flex bwd  fwd+bwd | ours/flex (fwd+bwd)")
    for r in res["timing"]:
        print(f"{r['seq_len']:6d} {r['causal']:6d} | {r['ours_fwd']:.4f} {r['ours_bwd']:.4f} "
              f"{r['ours_fwd_bwd']:.4f} | {r.get('flex_bwd', float('nan')):.4f} "
              f"{r.get('flex_fwd_bwd', float('nan')):.4f} | {r['fwd_bwd_vs_flex'] or 0:.2f}")
    print("tokens causal | bwd det  atomic  det/atomic | fwd+bwd det  atomic | max diff dq dk dv")
    for r in res["timing"]:
        if "atomic_bwd" in r:
            print(f"{r['seq_len']:6d} {r['causal']:6d} | {r['ours_bwd']:.4f} "
                  f"{r['atomic_bwd']:.4f} {r['determinism_cost_bwd']:.2f} | "
                  f"{r['ours_fwd_bwd']:.4f} {r['atomic_fwd_bwd']:.4f} | "
                  + " ".join(f"{x:.1e}" for x in r["atomic_max_diff"]))
    for r in res["timing"]:
        if "tc_bwd" in r:
            print(f"{r['seq_len']:6d} {r['causal']:6d} | {r['kernel']} bwd {r['ours_bwd']:.4f} "
                  f"flash_tc bwd {r['tc_bwd']:.4f} ratio {r['ours_bwd'] / r['tc_bwd']:.2f}")
    for r in res.get("variants", []):
        print(f"variant {r['variant']:10s} bwd {r['bwd_ms']:.4f} ms  max diff {r['max_diff']:.2e}")
    ex = res.get("variants_exact", [])
    if ex:
        print(f"variants bit-identical to the default: {sum(r['identical'] for r in ex)}/{len(ex)}")
    save()


if __name__ == "__main__":
    main()
