"""Peers outside PyTorch, benchmarked next to ours where they import: FlashAttention-4 (its
CuTe-DSL kernels, ``flash_attn.cute``) and cuDNN's SDPA through its graph API (``cudnn``,
the ``nvidia-cudnn-frontend`` package). Neither is a dependency of attn_numba: a state whose
peer does not import is skipped with the reason (``../shared/peers/README.md`` of the
development checkout says how the H200 runs got them).

Both take the inputs as (batch, seqlen, heads, head_size) torch tensors, GQA by fewer KV
heads, and are checked against the float64 reference before they are timed, like every
case (:mod:`attn_numba.bench.cases`).

* **FA4**: ``flash_attn_func(q, k, v, softmax_scale=, causal=, window_size=(left, right))``
  with ``None`` for an unbounded side.
* **cuDNN**: one graph per config, q, k, v declared as (B, H, S, D) views of the BSHD
  tensors; the window is ``diagonal_band_left_bound = left + 1`` and
  ``diagonal_band_right_bound = right`` (bottom-right aligned), causal is
  ``use_causal_mask_bottom_right`` with the left bound alone. The handle's stream is set to
  the launch stream before each execute.
"""
from __future__ import annotations

from .torch_cases import TorchCase

NAMES = ("fa4", "cudnn")


def _import_error(what, names):
    try:
        __import__(what, fromlist=names)
    except Exception as exc:  # noqa: BLE001 - any failure to import means "not here"
        return f"{what} does not import ({type(exc).__name__}: {str(exc)[:120]})"
    return None


class _BshdCase(TorchCase):
    """A peer that reads (B, S, H, D) tensors: the Numba inputs viewed by torch, no copy."""

    def _bshd(self, torch):
        i = self.inputs
        return tuple(torch.as_tensor(x, device="cuda") for x in (i.dq, i.dk, i.dv))

    def check(self, stream=None):
        # TorchCase.check reads (B, H, S, D) outputs; ours are (B, S, H, D): transpose views
        call = self._call
        self._call = lambda: call().transpose(1, 2)
        try:
            return super().check(stream)
        finally:
            self._call = call


class FA4Case(_BshdCase):
    def unsupported(self):
        why = super().unsupported()
        if why:
            return why
        import torch
        if torch.cuda.get_device_capability()[0] < 9:
            return "FlashAttention-4's CuTe kernels need sm_90 or newer"
        return _import_error("flash_attn.cute", ["flash_attn_func"])

    def _setup_peer(self, torch, c, left, right):
        from flash_attn.cute import flash_attn_func
        self.bq, self.bk, self.bv = self._bshd(torch)
        self.fa = flash_attn_func
        self.kw = dict(softmax_scale=self.scale, causal=bool(c.causal),
                       window_size=(None if left < 0 else left, None if right < 0 else right))

    def _call(self):
        out = self.fa(self.bq, self.bk, self.bv, **self.kw)
        return out[0] if isinstance(out, tuple) else out


class CudnnCase(_BshdCase):
    def unsupported(self):
        return super().unsupported() or _import_error("cudnn", ["pygraph"])

    def _setup_peer(self, torch, c, left, right):
        import cudnn
        self.bq, self.bk, self.bv = self._bshd(torch)
        self.out = torch.empty_like(self.bq)
        self.handle = cudnn.create_handle()
        g = cudnn.pygraph(io_data_type=cudnn.data_type.HALF,
                          intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=self.handle)
        views = [x.permute(0, 2, 1, 3) for x in (self.bq, self.bk, self.bv, self.out)]
        tq, tk, tv = (g.tensor_like(x) for x in views[:3])
        kw = dict(name="sdpa", q=tq, k=tk, v=tv, attn_scale=self.scale, generate_stats=False)
        if left >= 0:
            kw["diagonal_band_left_bound"] = left + 1
        if c.causal:
            kw["use_causal_mask_bottom_right"] = True
        elif right >= 0:
            kw["diagonal_band_right_bound"] = right
            kw["diagonal_alignment"] = cudnn.diagonal_alignment.BOTTOM_RIGHT
        o, _ = g.sdpa(**kw)
        o.set_output(True).set_dim(list(views[3].shape)).set_stride(list(views[3].stride()))
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        self.graph, self.cudnn = g, cudnn
        self.pack = {tq: views[0], tk: views[1], tv: views[2], o: views[3]}
        self.workspace = torch.empty(g.get_workspace_size(), device="cuda", dtype=torch.uint8)

    def _call(self):
        import torch
        self.cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream().cuda_stream)
        self.graph.execute(self.pack, self.workspace, handle=self.handle)
        return self.out
