"""``attn-numba bench --backward``: NVBench times of the backward alone (``bwd``) and of forward
plus backward (``fwd+bwd``), for this package's backward kernels and the PyTorch peers, on the
same grid and inputs as the forward benchmark.

* **Ours**: ``attn_numba.mha_bwd`` (and ``mha_fwd`` before it for ``fwd+bwd``) on torch
  tensors, on NVBench's stream, writing buffers allocated once outside the timed call.
* **FlexAttention**: the forward benchmark's compiled ``flex_attention`` with its block mask,
  differentiated by ``torch.autograd.grad`` (``retain_graph`` for ``bwd``, so only the backward
  is timed); **SDPA**: ``scaled_dot_product_attention`` with the dense boolean mask, K and V
  repeated to the query heads inside the graph (so their gradients sum over the group).
* **Check** (before timing, every state up to :data:`CHECK_MAX_TOKENS`): dq, dk and dv
  against torch's math path in float32 on the same inputs, with FlashAttention's rule: each
  error at most twice that of torch's own float16 math path, plus 1e-4.
* **Counts**: the backward does five matmuls per (query, key, head) pair inside the window
  (S = Q K^T recomputed, dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q): ``10 * D`` FLOPs
  per pair, 2.5 times the forward's ``4 * D``. ``peak_bytes``: torch's peak allocation
  during one fwd + bwd public call above what was allocated before it.

Records go into ``summary.json`` under ``"backward"`` (``{"records": [...], "nvbench": ...}``),
next to the forward records, which the forward tools read alone.
"""
from __future__ import annotations

import time

import numpy as np

from .cases import FlexCase, SdpaCase, get_inputs, random_normal
from .grid import INT_AXES, Config, derived, fmt_mib
from . import summary as S
from .summary import TAGS, _num, make_record

BENCHMARK = "run_mha_bwd"
PASSES = ("bwd", "fwd+bwd")
PEERS = ("flexattention", "sdpa")
#: states longer than this are timed but not checked (the dense float32 reference needs
#: about 4 S^2 bytes per query head of a KV group)
CHECK_MAX_TOKENS = 16384


def flops(cfg, pass_):
    """Exact FLOPs of ``pass_`` at ``cfg``: 10 D per pair for the backward, plus the
    forward's 4 D for ``fwd+bwd``."""
    fwd = derived(cfg)["flops"]
    return fwd * 5 // 2 + (fwd if pass_ == "fwd+bwd" else 0)


# --------------------------------------------------------------------------- reference

def math_grads(q, k, v, dout, left, right, scale, dtype):
    """Gradients of softmax attention by torch's math path in ``dtype``: q, dout (B, S, H, D),
    k, v (B, S, Hkv, D) torch tensors; one KV head at a time to bound memory. Rows that see
    no key have zero output and gradient. Returns (dq, dk, dv) float32 (B, S, H(kv), D)."""
    import torch
    b, sq, h, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    g = h // hkv
    i = torch.arange(sq, device=q.device)[:, None] + (sk - sq)
    j = torch.arange(sk, device=q.device)[None, :]
    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if left >= 0:
        mask &= j >= i - left
    if right >= 0:
        mask &= j <= i + right
    grads = [torch.empty(x.shape, dtype=torch.float32, device=q.device) for x in (q, k, v)]
    for kh in range(hkv):
        hs = slice(kh * g, (kh + 1) * g)
        qq = q[:, :, hs].to(dtype).detach().requires_grad_()
        kk = k[:, :, kh:kh + 1].to(dtype).detach().requires_grad_()
        vv = v[:, :, kh:kh + 1].to(dtype).detach().requires_grad_()
        s = torch.einsum("bqhd,bkxd->bhqk", qq, kk) * scale
        s = s.masked_fill(~mask, float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
        o = torch.einsum("bhqk,bkxd->bqhd", p, vv)
        gq, gk, gv = torch.autograd.grad(o, (qq, kk, vv), dout[:, :, hs].to(dtype))
        grads[0][:, :, hs] = gq.float()
        grads[1][:, :, kh:kh + 1] = gk.float()
        grads[2][:, :, kh:kh + 1] = gv.float()
    return tuple(grads)


_REF = {}


def reference(cfg, tensors):
    """``(ref32, err16)`` for ``cfg``, computed once: the float32 math-path gradients and the
    max abs error of the float16 math path against them, per gradient."""
    key = cfg.key()
    if key not in _REF:
        import torch
        _REF.clear()
        q, k, v, dout = tensors
        left, right = cfg.window
        scale = 1.0 / float(np.sqrt(cfg.head_size))
        ref = math_grads(q, k, v, dout, left, right, scale, torch.float32)
        low = math_grads(q, k, v, dout, left, right, scale, torch.float16)
        _REF[key] = (ref, tuple(float((a - r).abs().max()) if a.numel() else 0.0
                                for a, r in zip(low, ref)))
    return _REF[key]


def check_grads(grads, ref, err16):
    """FlashAttention's rule for each of dq, dk, dv: ``err <= 2 * err16 + 1e-4`` and finite."""
    errs, tols, ok = {}, {}, True
    for name, x, r, e16 in zip(("dq", "dk", "dv"), grads, ref, err16):
        x = x.float()
        finite = bool(x.isfinite().all())
        err = float((x - r).abs().max()) if finite and x.numel() else (0.0 if finite else
                                                                          float("nan"))
        errs[name], tols[name] = err, 2 * e16 + 1e-4
        ok = ok and finite and err <= tols[name]
    return {"ok": bool(ok), "max_err": errs, "tol": tols}


# --------------------------------------------------------------------------- cases

class BwdCase:
    """One kernel, one pass, one config; torch tensors (B, S, H, D) shared by its kernels."""

    kind = "kernel"

    def __init__(self, kernel, cfg, pass_):
        import torch
        self.kernel, self.cfg, self.pass_ = kernel, cfg, pass_
        i = get_inputs(cfg)
        self.q, self.k, self.v = (torch.as_tensor(x, device="cuda") for x in (i.dq, i.dk, i.dv))
        seed = [20241, *(x + 1 for x in cfg.key())]
        self.dout = torch.as_tensor(random_normal(seed, tuple(self.q.shape)), device="cuda")
        self.scale = 1.0 / float(np.sqrt(cfg.head_size))

    def unsupported(self):
        return None

    def tensors(self):
        return self.q, self.k, self.v, self.dout

    def check(self, stream=None):
        if self.cfg.seq_len * self.cfg.num_seqs > CHECK_MAX_TOKENS:
            return None
        import torch
        ref, err16 = reference(self.cfg, self.tensors())
        grads = self.grads(stream)
        torch.cuda.synchronize()
        return check_grads(grads, ref, err16)

    def peak_bytes(self):
        """Peak bytes torch allocates during one fwd + bwd public call (after a warm-up)."""
        import torch
        call = self.public_call()
        call()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        res = call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del res
        return int(peak)


class OursCase(BwdCase):
    def _kw(self):
        c = self.cfg
        return dict(window_size=(c.window_left, c.window_right), causal=bool(c.causal))

    def unsupported(self):
        from .. import kernels
        if kernels.get_bwd(self.kernel) is None:
            return f"backward kernel {self.kernel!r} is not in this build"
        return None

    def _buffers(self):
        if not hasattr(self, "_bufs"):
            import torch
            from .. import mha_fwd
            out, lse = mha_fwd(self.q, self.k, self.v, return_lse=True, **self._kw())
            self._bufs = (out, lse, torch.empty_like(self.q), torch.empty_like(self.k),
                          torch.empty_like(self.v))
        return self._bufs

    def launch(self, stream=None):
        from .. import mha_bwd, mha_fwd
        out, lse, dq, dk, dv = self._buffers()
        kw = self._kw()
        if self.pass_ == "fwd+bwd":
            mha_fwd(self.q, self.k, self.v, out=out, lse_out=lse, stream=stream, **kw)
        return mha_bwd(self.dout, self.q, self.k, self.v, out, lse, dq=dq, dk=dk, dv=dv,
                       kernel=self.kernel, stream=stream, **kw)

    def grads(self, stream=None):
        return self.launch(stream)

    def public_call(self):
        from .. import mha_bwd, mha_fwd
        q, k, v, dout, kw = self.q, self.k, self.v, self.dout, self._kw()

        def call():
            out, lse = mha_fwd(q, k, v, return_lse=True, **kw)
            return mha_bwd(dout, q, k, v, out, lse, kernel=self.kernel, **kw)
        return call


class PeerCase(BwdCase):
    """A PyTorch peer of the forward benchmark (its inputs (B, H, S, D), its mask), made a
    leaf of autograd."""

    kind = "peer"

    def __init__(self, kernel, cfg, pass_):
        super().__init__(kernel, cfg, pass_)
        self.fwd = (FlexCase if kernel == "flexattention" else SdpaCase)(kernel, cfg)
        self._out = None

    def unsupported(self):
        return self.fwd.unsupported()

    def _setup(self):
        if self._out is None:
            f = self.fwd
            f._setup()
            g = self.cfg.num_heads // self.cfg.num_kv_heads
            if self.kernel == "sdpa":   # leaves of KV-head size; repeated inside the graph
                f.k, f.v = f.k[:, ::g].contiguous(), f.v[:, ::g].contiguous()
            self.leaves = tuple(x.detach().requires_grad_() for x in (f.q, f.k, f.v))
            self.dout_t = self.dout.transpose(1, 2).contiguous()
            self._out = self._forward()
        return self.leaves

    def _forward(self):
        f, (q, k, v) = self.fwd, self.leaves
        if self.kernel == "sdpa":
            g = self.cfg.num_heads // self.cfg.num_kv_heads
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
            return f.sdpa(q, k, v, attn_mask=f.mask, scale=f.scale)
        return f.fn(q, k, v, block_mask=f.block_mask, scale=f.scale, enable_gqa=True)

    def _grads_now(self):
        import torch
        leaves = self._setup()
        if self.pass_ == "fwd+bwd":
            return torch.autograd.grad(self._forward(), leaves, self.dout_t)
        return torch.autograd.grad(self._out, leaves, self.dout_t, retain_graph=True)

    def launch(self, stream=None):
        import torch
        self._setup()
        with torch.cuda.stream(self.fwd._torch_stream(stream)):
            return self._grads_now()

    def grads(self, stream=None):
        return tuple(x.transpose(1, 2) for x in self.launch(stream))

    def public_call(self):
        import torch
        leaves = self._setup()
        return lambda: torch.autograd.grad(self._forward(), leaves, self.dout_t)


def make_case(kernel, cfg, pass_):
    return (PeerCase if kernel in PEERS else OursCase)(kernel, cfg, pass_)


# --------------------------------------------------------------------------- NVBench

def register(kernels, grid, results, progress):
    """Register ``run_mha_bwd`` over kernels x passes x ``grid``; each state's check, mode
    and peak bytes go into ``results[(kernel, pass, cfg.key())]``."""
    import cuda.bench as bench
    from ..warmup import count_compiles

    def run_mha_bwd(state):
        kernel, pass_ = state.get_string("Kernel"), state.get_string("Pass")
        cfg = Config(**{a: int(state.get_int64(a)) for a in INT_AXES})
        progress.start(f"{kernel} {pass_}", cfg)
        res = results.setdefault((kernel, pass_, cfg.key()), {"check": None})
        try:
            case = make_case(kernel, cfg, pass_)
            why = case.unsupported()
            if why:
                progress.note("skipped: " + why)
                state.skip(why)
                return
            d, n = derived(cfg), flops(cfg, pass_)
            state.add_element_count(d["tokens"], "Tokens")
            state.add_summary("Est. FLOPS", int(n))
            state.add_summary("Q Tensor", fmt_mib(d["q_bytes"]))
            ptr = state.get_stream().addressof()
            t0 = time.perf_counter()
            res["check"] = chk = case.check(ptr)
            progress.note(f"check {chk} after {time.perf_counter() - t0:.1f} s")
            if chk is not None and not chk["ok"] and case.kind == "kernel":
                state.skip(f"gradient check failed: {chk}")
                return
            with count_compiles() as compiles:
                state.exec(lambda launch: case.launch(launch.get_stream().addressof()))
            res["exec_mode"] = "cold + batch, blocking kernel" + (
                f", {compiles.count} COMPILES IN TIMED REGION" if compiles.count else "")
            if pass_ == "fwd+bwd":
                res["peak_bytes"] = case.peak_bytes()
        except Exception as exc:  # one broken case must not end the sweep
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            progress.note("error, skipped: " + msg)
            state.skip("error: " + msg)

    b = bench.register(run_mha_bwd)
    b.set_name(BENCHMARK)
    b.add_string_axis("Kernel", list(kernels))
    b.add_string_axis("Pass", list(PASSES))
    for a in INT_AXES:
        b.add_int64_axis(a, [int(x) for x in grid[a]])
    return b


def records(states, results):
    """Backward records from NVBench ``states`` ((point, summaries, skipped, reason), as
    :mod:`attn_numba.bench.summary` reads them) and the run's ``results``."""
    out = []
    for point, summ, skipped, reason in states:
        kernel, pass_ = str(point.get("Kernel")), str(point.get("Pass"))
        cfg = Config(**{a: int(point[a]) for a in INT_AXES})
        vals = {field: summ.get(tag) for tag, field in TAGS.items()}
        res = results.get((kernel, pass_, cfg.key()), {})
        t = vals["gpu_time_s"]
        rec = make_record(kernel, cfg, gpu_time_s=None if t is None else float(t),
                          batch_gpu_time_s=_num(vals["batch_gpu_time_s"], float),
                          samples=_num(vals["samples"], int), noise=_num(vals["noise"], float),
                          skipped=skipped,
                          skip_reason=reason, check=res.get("check"),
                          exec_mode=res.get("exec_mode"), peak_bytes=res.get("peak_bytes"))
        n = flops(cfg, pass_)
        rec.update({"pass": pass_, "flops": n, "tflops": n / t / 1e12 if t else None,
                    "gbps": None})
        out.append(rec)
    return out


def record_key(rec):
    return (rec["pass"], rec["kernel"], *(rec[a] for a in INT_AXES))


def merge(old, new):
    """The backward section ``new`` with the records of ``old`` it does not replace."""
    if not old:
        return new
    seen = {record_key(r) for r in new["records"]}
    out = dict(new)
    out["records"] = [r for r in old.get("records", []) if record_key(r) not in seen] + \
        list(new["records"])
    out["nvbench_runs"] = list(old.get("nvbench_runs", [])) + [new.get("nvbench")]
    return out


def run(kernels, grid, out, nvbench_args, ceilings):
    """Run the backward benchmark into folder ``out``: NVBench's JSON and markdown, and the
    ``"backward"`` section of ``out/summary.json`` (merged with what is there). Returns the
    new records."""
    import json

    import cuda.bench as bench
    from .grid import iter_configs
    from .nvbench_def import Progress
    seqs = sorted(grid["seq_len"])
    names = "-".join(kernels) + f"_S{seqs[0]}" + (f"-{seqs[-1]}" if len(seqs) > 1 else "")
    json_path, md_path = out / f"nvbench_backward_{names}.json", out / f"nvbench_backward_{names}.md"
    results = {}
    total = len(list(iter_configs(grid))) * len(kernels) * len(PASSES)
    register(kernels, grid, results, Progress(total))
    argv = ["attn-numba-bench", "--devices", "0", "--json", str(json_path), "--md", "stdout",
            "--md", str(md_path), *nvbench_args]
    t0 = time.perf_counter()
    bench.run_all_benchmarks(argv)
    wall = time.perf_counter() - t0
    try:
        states = list(S._states_with_cuda_bench(json_path, BENCHMARK))
    except ImportError:
        states = list(S._states_plain(json.loads(json_path.read_text()), BENCHMARK))
    recs = records(states, results)
    section = {"date": S.now_iso(), "ceilings": ceilings, "versions": S.versions(),
               "nvbench": {"argv": argv[1:], "json": json_path.name, "markdown": md_path.name,
                           "wall_s": round(wall, 1)},
               "records": recs}
    spath = out / "summary.json"
    doc = json.loads(spath.read_text()) if spath.exists() else None
    if doc is None:
        nv_doc = json.loads(json_path.read_text())
        devices = nv_doc.get("devices") or [{}]
        doc = {"schema": S.SCHEMA_VERSION, "device": devices[0].get("name", "unknown"),
               "date": S.now_iso(), "simulated": False, "versions": S.versions(),
               "ceilings": ceilings, "records": []}
    doc["backward"] = merge(doc.get("backward"), section)
    S.write(spath, doc)
    print_table(recs)
    return recs


def print_table(recs):
    """One line per state: kernel, pass, causal, tokens, ms, TFLOP/s, check, peak."""
    for r in sorted(recs, key=lambda r: (r["seq_len"], r["causal"], r["pass"], r["kernel"])):
        t = r["gpu_time_s"]
        chk = r.get("check")
        ok = "-" if chk is None else ("ok" if chk["ok"] else "FAILED")
        peak = r.get("peak_bytes")
        print(f"{r['kernel']:>14} {r['pass']:>8} c{r['causal']} S={r['seq_len']:>6} "
              + (f"{t * 1e3:8.3f} ms {r['tflops']:6.1f} TF/s" if t else f"{'skipped':>24}")
              + f"  check {ok}" + (f"  peak {peak / 2**20:.0f} MiB" if peak else ""))
