"""Benchmark cases: inputs for a config, the check against the reference, a launch on a stream.

One :class:`Case` per (kernel, config). ``case.check(stream)`` runs the call once (which also
compiles and warms it up), copies the output back and compares a few blocks of query rows
(first, middle and last; every head) with :func:`attn_numba.reference.mha_fwd_ref` under the
FlashAttention tolerance rule of :mod:`attn_numba.testing`. ``case.launch(stream)`` enqueues one
call and returns its output without synchronising. ``stream`` is a raw ``cudaStream_t`` address
(what NVBench hands out) or ``None`` for the default stream (the simulator).

Numba kernels are called through the public API, ``attn_numba.mha_fwd`` on device arrays with
``stream=`` and, in ``launch``, ``out=``/``lse_out=`` buffers allocated once per case.
``case.public_call()`` gives the call a user makes (torch tensors in, outputs allocated per
call) for :mod:`attn_numba.bench.calltime`. The PyTorch peers are ``flexattention`` (``torch.compile``'d ``flex_attention``
with a sliding-window block mask, ``enable_gqa=True``) and ``sdpa``
(``scaled_dot_product_attention`` with a dense boolean mask; K and V are repeated to the query
heads once, outside the timed call, which lets PyTorch pick its memory-efficient kernel).
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .. import interface
from ..problem import normalize_window
from ..reference import mha_fwd_ref
from ..testing import compare, tolerance
from .grid import DTYPE, PEERS

#: rows per checked block; configs up to 3 blocks long are checked whole
CHECK_BLOCK = 64
#: the inputs' seed: every kernel of a config sees the same q, k, v
SEED = 20240


# --------------------------------------------------------------------------- reference on a row block

def reference_rows(q, k, v, r0, r1, window_size, causal, softmax_scale=None, p_dtype=None):
    """The float64 reference for query rows ``[r0, r1)`` only, exactly.

    Row ``i`` sees key ``j`` iff ``i + sk - sq - left <= j <= i + sk - sq + right``. Calling
    :func:`mha_fwd_ref` on ``q[:, r0:r1]`` and the keys ``[0, e)`` shifts every row's diagonal
    by ``delta = (e - r1) - (sk - sq)``, so the sub-call uses the window
    ``(left + delta, right - delta)``, with ``e`` just large enough for the block's last row.
    Keys before the block's first visible key ``k0`` are dropped too (the window is aligned to
    the last key, so dropping keys at the front does not move it): the sub-call costs
    O(rows x window), not O(rows x seq_len), which keeps the check of a 512k-token call cheap.
    Returns ``(out, lse)`` as :func:`mha_fwd_ref` does, for those rows.
    """
    sq, sk = q.shape[1], k.shape[1]
    left, right = normalize_window(tuple(window_size), bool(causal))
    if right < 0:
        e = sk
    else:
        e = max(0, min(sk, r1 + sk - sq + right))
    delta = (e - r1) - (sk - sq)
    sub_left = left + delta if left >= 0 else -1
    sub_right = right - delta if right >= 0 else -1
    if sub_left < -1 or sub_right < -1:  # block sees no key at all: let the full call decide
        return mha_fwd_ref(q, k, v, softmax_scale=softmax_scale, causal=bool(causal),
                           window_size=tuple(window_size), p_dtype=p_dtype)
    k0 = min(e, max(0, r0 + sk - sq - left)) if left >= 0 else 0
    out, lse = mha_fwd_ref(q[:, r0:r1], k[:, k0:e], v[:, k0:e], softmax_scale=softmax_scale,
                           causal=False, window_size=(sub_left, sub_right), p_dtype=p_dtype)
    return out, lse


def check_blocks(seq_len, block=CHECK_BLOCK):
    """Row blocks ``[(r0, r1), ...]`` to check: the whole sequence when short, else the
    first, a middle and the last ``block`` rows (the window's clipped and interior rows)."""
    if seq_len <= 3 * block:
        return [(0, seq_len)]
    mid = seq_len // 2 - block // 2
    return [(0, block), (mid, mid + block), (seq_len - block, seq_len)]


# --------------------------------------------------------------------------- inputs, cached per config

@dataclass
class Inputs:
    cfg: object
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dq: object = None
    dk: object = None
    dv: object = None
    refs: dict = field(default_factory=dict)

    def reference(self):
        """``{(r0, r1): (out64, lse64, out_lowp)}`` for the checked blocks (computed once)."""
        if not self.refs:
            left, right = self.cfg.window_left, self.cfg.window_right
            for r0, r1 in check_blocks(self.cfg.seq_len):
                kw = dict(window_size=(left, right), causal=bool(self.cfg.causal))
                ref, lse = reference_rows(self.q, self.k, self.v, r0, r1, **kw)
                low, _ = reference_rows(self.q, self.k, self.v, r0, r1, p_dtype=DTYPE, **kw)
                self.refs[(r0, r1)] = (ref, lse, low.astype(DTYPE).astype(np.float64))
        return self.refs


_INPUTS_CACHE = {}

#: standard normals drawn per chunk (and per thread) by :func:`random_normal`
_CHUNK = 1 << 24


def random_normal(seed, shape, dtype=DTYPE):
    """Standard normal ``dtype`` values, reproducible from ``seed`` (a list of ints): float32
    draws in chunks, chunk ``i`` from ``default_rng([*seed, i])``, on all host cores (NumPy
    releases the GIL while it fills). At 524288 tokens q alone has 2^31 elements; float64
    draws plus a cast on one core took tens of seconds per config on the H200 host."""
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)

    def fill(i):
        n = min(_CHUNK, flat.size - i * _CHUNK)
        flat[i * _CHUNK:i * _CHUNK + n] = np.random.default_rng([*seed, i]).standard_normal(
            n, dtype=np.float32)

    chunks = range(-(-flat.size // _CHUNK))
    with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1) or 1) as pool:
        list(pool.map(fill, chunks))
    return out


def get_inputs(cfg):
    """Random q, k, v for ``cfg`` (host and device), shared by every kernel of the config;
    only the last config's inputs are kept."""
    key = cfg.key()
    if key not in _INPUTS_CACHE:
        _INPUTS_CACHE.clear()
        from numba import cuda
        b, s, h, hkv, d = (cfg.num_seqs, cfg.seq_len, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_size)
        shapes = ((b, s, h, d), (b, s, hkv, d), (b, s, hkv, d))
        seed = [SEED, *(x + 1 for x in key)]  # windows can be -1; seeds must be >= 0
        q, k, v = (random_normal([*seed, n], shape) for n, shape in enumerate(shapes))
        inp = Inputs(cfg, q, k, v)
        inp.dq, inp.dk, inp.dv = (cuda.to_device(x) for x in (q, k, v))
        cuda.synchronize()
        _INPUTS_CACHE[key] = inp
    return _INPUTS_CACHE[key]


# --------------------------------------------------------------------------- cases

@dataclass
class CheckResult:
    ok: bool
    max_err: float
    tol: float
    lse_ok: bool | None
    rows_checked: int

    def as_dict(self):
        return {"ok": bool(self.ok), "max_err": float(self.max_err), "tol": float(self.tol),
                "lse_ok": self.lse_ok, "rows_checked": int(self.rows_checked)}

    def __str__(self):
        lse = "" if self.lse_ok is None else f", lse {'ok' if self.lse_ok else 'WRONG'}"
        return (f"{'ok' if self.ok else 'FAILED'}: max err {self.max_err:.2e} "
                f"(tol {self.tol:.2e}{lse}) on {self.rows_checked} rows x all heads")


def _compare_blocks(inp, rows_of, lse):
    """Compare the output's checked rows with the reference. ``rows_of(r0, r1)`` returns
    the host rows ``out[:, r0:r1]`` (B, r1 - r0, H, D): only the checked blocks are copied
    back, not a 4 GiB output at 524288 tokens. ``lse`` is the host (B, H, S) array or None."""
    ok, err, tol, lse_ok, rows = True, 0.0, float("inf"), None, 0
    for (r0, r1), (ref, ref_lse, low) in inp.reference().items():
        o = np.asarray(rows_of(r0, r1), np.float64)
        rows += r1 - r0
        if lse is not None:
            c = compare(o, lse[:, :, r0:r1], ref, ref_lse, low, DTYPE)
            block_ok, block_err, block_tol = c.ok, c.max_err, c.tol
            lse_ok = c.lse_tol_ok if lse_ok is None else (lse_ok and c.lse_tol_ok)
        else:
            block_tol = tolerance(ref, low, DTYPE)
            finite = bool(np.all(np.isfinite(o)))
            block_err = float(np.max(np.abs(o - ref), initial=0.0)) if finite else float("nan")
            block_ok = finite and block_err <= block_tol
        ok = ok and block_ok
        err = block_err if not np.isfinite(block_err) else max(err, block_err)
        tol = min(tol, block_tol)
    return CheckResult(bool(ok), err, tol, lse_ok, rows)


class Case:
    """One kernel on one config. Subclasses define ``_call(stream, check)``."""

    kind = "kernel"

    def __init__(self, kernel, cfg):
        self.kernel = kernel
        self.cfg = cfg
        self.inputs = get_inputs(cfg)
        self.scale = 1.0 / float(np.sqrt(cfg.head_size))

    def unsupported(self):
        """Why this case cannot run (a string), or None."""
        return None

    def check(self, stream=None):
        raise NotImplementedError

    def launch(self, stream=None):
        raise NotImplementedError


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


class TorchCase(Case):
    """A PyTorch peer; inputs are viewed from the Numba device arrays and laid out (B, H, S, D)
    once, outside the timed call."""

    kind = "peer"

    def __init__(self, kernel, cfg):
        super().__init__(kernel, cfg)
        self._ready = False

    def unsupported(self):
        try:
            import torch
        except ImportError:
            return "torch is not installed"
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None

    def _setup(self):
        if self._ready:
            return
        import torch
        i, c = self.inputs, self.cfg
        q, k, v = (torch.as_tensor(x, device="cuda") for x in (i.dq, i.dk, i.dv))
        self.q = q.transpose(1, 2).contiguous()  # (B, H, S, D)
        self.k = k.transpose(1, 2).contiguous()  # (B, Hkv, S, D)
        self.v = v.transpose(1, 2).contiguous()
        left, right = c.window
        self._setup_peer(torch, c, left, right)
        torch.cuda.synchronize()
        self._ready = True

    def _torch_stream(self, stream):
        import torch
        if stream is None:
            return torch.cuda.current_stream()
        return torch.cuda.ExternalStream(stream)

    def launch(self, stream=None):
        import torch
        self._setup()
        with torch.cuda.stream(self._torch_stream(stream)):
            return self._call()

    def public_call(self):
        """A no-argument callable: the peer's call on torch's current stream."""
        self._setup()
        return self._call

    def check(self, stream=None):
        import torch
        self._setup()
        ts = self._torch_stream(stream)
        with torch.cuda.stream(ts):
            out = self._call()
        ts.synchronize()

        def rows_of(r0, r1):  # out is (B, H, S, D): (B, rows, H, D) on the host
            return out[:, :, r0:r1].transpose(1, 2).float().cpu().numpy()

        return _compare_blocks(self.inputs, rows_of, None)


def _window_mask_mod(sq, sk, left, right):
    """FlexAttention ``mask_mod`` for the API's window (-1 = unbounded)."""
    shift = sk - sq

    def mask_mod(b, h, q_idx, kv_idx):
        rel = kv_idx - q_idx - shift  # key offset from the row's diagonal
        ok = rel >= -left if left >= 0 else rel == rel
        if right >= 0:
            ok = ok & (rel <= right)
        return ok

    return mask_mod


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    import torch
    from torch.nn.attention.flex_attention import flex_attention
    for name in ("recompile_limit", "cache_size_limit"):  # one compile per (shape, mask)
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    return torch.compile(flex_attention, dynamic=False)


#: FlexAttention's block mask is built eagerly up to this many tokens (its S x S boolean
#: mask: 1 GiB) and by the compiled ``create_block_mask`` beyond
EAGER_MASK_MAX = 32768


class FlexCase(TorchCase):
    """FlexAttention as its documentation recommends: ``flex_attention`` under
    ``torch.compile`` with a block mask. Up to :data:`EAGER_MASK_MAX` tokens the mask comes
    from the eager ``create_block_mask``; beyond, from the compiled one (``_compile=True``),
    which evaluates the mask block by block instead of materialising the S x S boolean mask
    (S^2 bytes: 16 GiB at 131072 tokens, where the eager one failed on the H200). The two
    give the same block mask, and neither is timed. Why not always the compiled one: at
    16384 tokens its Triton kernel's ptxas did not finish in 150-170 s on three fresh H200
    machines (runs 11, 13 and 14; results/h200/checks/s4_run1[34]_long_flex_16384.log),
    while 65536 to 524288 compiled in seconds. A PyTorch without the ``_compile`` keyword
    gets ``torch.compile(create_block_mask)``. Where even that fails (memory, say), the
    error propagates and the benchmark records the state as skipped with the reason."""

    def _setup_peer(self, torch, c, left, right):
        from torch.nn.attention.flex_attention import create_block_mask
        s = c.seq_len
        kw = dict(B=None, H=None, Q_LEN=s, KV_LEN=s, device="cuda")
        mask_mod = _window_mask_mod(s, s, left, right)
        if s <= EAGER_MASK_MAX:
            self.block_mask = create_block_mask(mask_mod, **kw)
        else:
            try:
                self.block_mask = create_block_mask(mask_mod, _compile=True, **kw)
            except TypeError as exc:  # a PyTorch without the _compile keyword
                if "_compile" not in str(exc):
                    raise
                self.block_mask = torch.compile(create_block_mask)(mask_mod, **kw)
        self.fn = _compiled_flex()

    def _call(self):
        return self.fn(self.q, self.k, self.v, block_mask=self.block_mask, scale=self.scale,
                       enable_gqa=True)


class SdpaCase(TorchCase):
    def _setup_peer(self, torch, c, left, right):
        s = c.seq_len
        i = torch.arange(s, device="cuda")[:, None]
        j = torch.arange(s, device="cuda")[None, :]
        mask = torch.ones(s, s, dtype=torch.bool, device="cuda")
        if left >= 0:
            mask &= j >= i - left
        if right >= 0:
            mask &= j <= i + right
        self.mask = mask
        g = c.num_heads // c.num_kv_heads
        self.k = self.k.repeat_interleave(g, dim=1).contiguous()
        self.v = self.v.repeat_interleave(g, dim=1).contiguous()
        self.sdpa = torch.nn.functional.scaled_dot_product_attention

    def _call(self):
        return self.sdpa(self.q, self.k, self.v, attn_mask=self.mask, scale=self.scale)


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
