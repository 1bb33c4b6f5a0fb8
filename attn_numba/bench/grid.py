"""The benchmark's axes and the columns derived from them (sizes, FLOPs, bytes); no GPU needed.

The default grid is the A30 log's: 1 sequence of 512..8192 tokens, 32 query heads over 8 KV
heads, head size 128, window (128, 128), causal 0 and 1, fp16. ``Kernel`` is an extra string
axis over this build's kernels and the PyTorch peers.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass

import numpy as np

from ..problem import dense_flops, min_bytes, normalize_window, windowed_flops

#: integer axes, in the log's column order
INT_AXES = ("num_seqs", "seq_len", "num_heads", "num_kv_heads", "head_size",
            "window_left", "window_right", "causal")

#: the A30 log's grid
DEFAULT_GRID = {
    "num_seqs": [1],
    "seq_len": [512, 1024, 2048, 4096, 8192],
    "num_heads": [32],
    "num_kv_heads": [8],
    "head_size": [128],
    "window_left": [128],
    "window_right": [128],
    "causal": [0, 1],
}

#: ``--quick``: the two ends of the sequence range, both masks
QUICK_OVERRIDES = {"seq_len": [1024, 8192]}

#: ``--long``: the long-sequence sweep, 16k to 512k tokens, the log's heads, head size and
#: window, causal 0 and 1 (only the kernels of :data:`LONG_KERNELS`: the others take seconds
#: per call at these sizes, and SDPA's dense S x S mask needs S^2 bytes)
LONG_SEQ_LENS = [16384, 65536, 131072, 262144, 524288]
LONG_OVERRIDES = {"seq_len": LONG_SEQ_LENS}
#: kernels of the long sweep, where this build has them: the tensor-core kernels and
#: FlexAttention (SDPA is left out: its dense boolean mask alone is S^2 bytes, 256 GiB at 512k)
LONG_KERNELS = ("flash_tc", "flash_wgmma", "flexattention")

#: ``--simulate``: sizes Numba's CUDA simulator runs in seconds
SIM_GRID = {
    "num_seqs": [1],
    "seq_len": [24, 40],
    "num_heads": [4],
    "num_kv_heads": [2],
    "head_size": [16],
    "window_left": [8],
    "window_right": [8],
    "causal": [0, 1],
}

#: peers benchmarked next to the Numba kernels: PyTorch's, then FlashAttention-4 and cuDNN
#: where they import (:mod:`attn_numba.bench.native_peers`; skipped with the reason otherwise)
PEERS = ("flexattention", "sdpa", "fa4", "cudnn")

#: kernels whose matmuls run on tensor cores (compared with the fp16 matmul ceiling); the others
#: run on CUDA cores in fp32 (compared with the fp32 matmul rate, TF32 off)
TENSOR_CORE = frozenset({"flash_tc", "flash_wgmma", "flexattention", "sdpa", "fa4", "cudnn"})

DTYPE = np.dtype(np.float16)


def is_long(seq_len):
    """Is ``seq_len`` beyond the log's grid (a point of the long-sequence sweep)?"""
    return int(seq_len) > max(DEFAULT_GRID["seq_len"])


def long_kernels(available):
    """The kernels of :data:`LONG_KERNELS` that this build has (``available``: package kernel
    names), in that order; the PyTorch peers are always listed."""
    have = set(available) | set(PEERS)
    return [k for k in LONG_KERNELS if k in have]


def ceiling_key(kernel):
    """Which compute ceiling in ``summary["ceilings"]`` a kernel is compared with."""
    return "fp16_matmul_tflops" if kernel in TENSOR_CORE else "fp32_matmul_tflops_no_tf32"


@dataclass(frozen=True)
class Config:
    """One point of the integer axes (the Kernel axis is separate)."""

    num_seqs: int
    seq_len: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    window_left: int
    window_right: int
    causal: int

    @property
    def window(self):
        """Effective ``(left, right)`` after ``causal`` (causal forces right = 0)."""
        return normalize_window((self.window_left, self.window_right), bool(self.causal))

    def axes(self):
        return asdict(self)

    def key(self):
        return tuple(getattr(self, a) for a in INT_AXES)


def make_grid(base=None, **overrides):
    """A copy of ``base`` (default: the log's grid) with the given axes replaced
    (``None`` leaves an axis unchanged)."""
    grid = {k: list(v) for k, v in (base or DEFAULT_GRID).items()}
    for name, values in overrides.items():
        if values is None:
            continue
        if name not in grid:
            raise KeyError(f"unknown axis {name!r}; axes are {', '.join(INT_AXES)}")
        grid[name] = [int(x) for x in values]
    return grid


def iter_configs(grid):
    """Every config of ``grid``, first axis fastest (NVBench's order)."""
    names = list(INT_AXES)
    for combo in itertools.product(*(grid[n] for n in reversed(names))):
        yield Config(**dict(zip(reversed(names), combo)))


def derived(cfg, itemsize=DTYPE.itemsize):
    """Columns computed from a config: tensor bytes, tokens, exact windowed FLOPs, the log's
    dense FLOPs (2 S^2 H D, window ignored) and the minimum bytes moved (Q, K, V read once,
    O written once; this is also the log's "Memory Usage")."""
    left, right = cfg.window
    s, b = cfg.seq_len, cfg.num_seqs
    q_bytes = b * s * cfg.num_heads * cfg.head_size * itemsize
    kv_bytes = b * s * cfg.num_kv_heads * cfg.head_size * itemsize
    return {
        "q_bytes": q_bytes,
        "k_bytes": kv_bytes,
        "v_bytes": kv_bytes,
        "out_bytes": q_bytes,
        "tokens": b * s,
        "flops": windowed_flops([s] * b, [s] * b, cfg.num_heads, cfg.head_size, left, right),
        "dense_flops": dense_flops(b, s, cfg.num_heads, cfg.head_size),
        "bytes": min_bytes(b * s, b * s, cfg.num_heads, cfg.num_kv_heads, cfg.head_size, itemsize),
    }


def fmt_mib(nbytes):
    """NVBench's size format, as in the log: ``4.000 MiB``."""
    return f"{nbytes / 2**20:.3f} MiB"


def device_slug(name):
    """``'NVIDIA H100 80GB HBM3'`` -> ``'nvidia-h100-80gb-hbm3'``."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return slug or "unknown-device"
