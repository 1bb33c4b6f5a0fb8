"""Benchmark cases: a kernel on a config, checked against the reference, launched on a stream.

One :class:`Case` per (kernel, config). ``case.check(stream)`` runs the call once (which also
compiles and warms it up), copies the output back and compares a few blocks of query rows
(first, middle and last; every head) with :func:`attn_numba.reference.mha_fwd_ref` under the
FlashAttention tolerance rule of :mod:`attn_numba.testing`. ``case.launch(stream)`` enqueues one
call and returns its output without synchronising. ``stream`` is a raw ``cudaStream_t`` address
(what NVBench hands out) or ``None`` for the default stream (the simulator).

Numba kernels are called through the public API, ``attn_numba.mha_fwd`` on device arrays with
``stream=`` and, in ``launch``, ``out=``/``lse_out=`` buffers allocated once per case.
``case.public_call()`` gives the call a user makes (torch tensors in, outputs allocated per
call) for :mod:`attn_numba.bench.calltime`. The PyTorch peers (``flexattention``, ``sdpa``)
are :mod:`attn_numba.bench.torch_cases`, the native ones (``fa4``, ``cudnn``)
:mod:`attn_numba.bench.native_peers`; :func:`make_case` picks the class.
"""
from __future__ import annotations

import numpy as np

from .. import interface
from .case import Case
from .grid import PEERS
from .inputs import (CheckResult, _compare_blocks, check_blocks, get_inputs,  # noqa: F401
                     random_normal, reference_rows)  # (re-exported for tests and bench/backward)
from .torch_cases import FlexCase, SdpaCase, TorchCase  # noqa: F401


class NumbaCase(Case):
    """A kernel of this package, through ``attn_numba.mha_fwd`` on device arrays.

    ``launch`` writes into ``out``/``lse`` buffers allocated once, outside the timed call
    (``out=``, ``lse_out=``), on the raw stream NVBench hands out: nothing is allocated or
    freed while NVBench measures, so the normal cold and batch measurements apply.
    ``public_call`` is what :func:`attn_numba.bench.calltime.call_time_s` times: the call a
    user makes, on torch tensors, with outputs from torch's caching allocator."""

    def __init__(self, kernel, cfg):
        super().__init__(kernel, cfg)
        self._bufs = None
        self._torch_inputs = None

    def _kw(self):
        c = self.cfg
        return dict(window_size=(c.window_left, c.window_right), causal=bool(c.causal),
                    kernel=self.kernel)

    def unsupported(self):
        from .. import kernels
        if kernels.get(self.kernel) is None:
            return f"kernel {self.kernel!r} is not in this build"
        return None

    def check(self, stream=None):
        from numba import cuda
        s = cuda.default_stream() if stream is None else cuda.external_stream(stream)
        i = self.inputs
        with interface._poison(True):  # unwritten elements show up as NaN
            out, lse = interface.mha_fwd(i.dq, i.dk, i.dv, return_lse=True, stream=s, **self._kw())
        lse_h = lse.copy_to_host(stream=s)
        s.synchronize()

        def rows_of(r0, r1):  # one contiguous copy per sequence of the batch
            return np.stack([out[b, r0:r1].copy_to_host() for b in range(out.shape[0])])

        return _compare_blocks(i, rows_of, lse_h)

    def buffers(self):
        """(out, lse) device arrays, allocated on the first call."""
        if self._bufs is None:
            from numba import cuda
            c, i = self.cfg, self.inputs
            self._bufs = (cuda.device_array(i.dq.shape, i.dq.dtype),
                          cuda.device_array((c.num_seqs, c.num_heads, c.seq_len), np.float32))
        return self._bufs

    def launch(self, stream=None):
        i = self.inputs
        out, lse = self.buffers()
        return interface.mha_fwd(i.dq, i.dk, i.dv, out=out, lse_out=lse,
                                 stream=stream, **self._kw())

    def public_call(self):
        """A no-argument callable: ``mha_fwd`` on torch views of the inputs."""
        import torch
        if self._torch_inputs is None:
            i = self.inputs
            self._torch_inputs = tuple(torch.as_tensor(x, device="cuda")
                                       for x in (i.dq, i.dk, i.dv))
        tq, tk, tv = self._torch_inputs
        kw = self._kw()
        return lambda: interface.mha_fwd(tq, tk, tv, **kw)


def make_case(kernel, cfg):
    """The :class:`Case` for ``kernel`` (a package kernel name or a peer) on ``cfg``."""
    if kernel == "flexattention":
        return FlexCase(kernel, cfg)
    if kernel == "sdpa":
        return SdpaCase(kernel, cfg)
    if kernel in ("fa4", "cudnn"):
        from .native_peers import CudnnCase, FA4Case
        return (FA4Case if kernel == "fa4" else CudnnCase)(kernel, cfg)
    if kernel in PEERS:
        raise ValueError(f"unknown peer {kernel!r}")
    return NumbaCase(kernel, cfg)
