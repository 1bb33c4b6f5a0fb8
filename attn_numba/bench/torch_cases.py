"""The PyTorch peers of the benchmark: FlexAttention (``torch.compile``'d ``flex_attention``
with a sliding-window block mask, ``enable_gqa=True``) and SDPA (a dense boolean mask; K and V
repeated to the query heads once, outside the timed call)."""
from __future__ import annotations

import functools

import numpy as np

from .case import Case
from .inputs import _compare_blocks


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
