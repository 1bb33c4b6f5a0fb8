"""What every kernel's configuration shares: the field names, the GQA packing rule, the
scalar arguments and the override rule.

Each kernel module has one frozen dataclass ``Config`` (its tile sizes, warps, stages and
options), a heuristic ``config_for(problem, **overrides)`` that picks it, ``build(config)``
(``functools.lru_cache``: one compile per configuration) and ``plan(problem, config=None)``.
Where the idea is the same the field is named the same: ``head_size``, ``dtype`` (NumPy
name), ``heads_per_block`` (query heads of one GQA group sharing the block's K/V tiles),
``block_m`` (score rows of a block), ``block_n`` (keys per K/V tile), ``warps``, ``stages``
(K/V buffers).
"""
import dataclasses
import math

import numpy as np

LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """The fields every tensor-core kernel's ``Config`` starts with; a kernel's subclass sets
    its defaults and adds its own options, and defines ``block_m``."""

    head_size: int
    dtype: str = "float16"
    heads_per_block: int = 1
    block_n: int = 64
    stages: int = 2

    @property
    def positions(self):
        """Query positions of a block: its score rows over the heads that share them."""
        return self.block_m // self.heads_per_block


def heads_per_block(group_size, choices=(4, 2, 1)):
    """The largest of ``choices`` that divides the GQA group size (1 if none does)."""
    for hb in choices:
        if group_size % hb == 0:
            return hb
    return 1


def dtype_name(dtype):
    """NumPy name of a dtype or a dtype name ('float16', 'bfloat16', ...)."""
    return dtype if isinstance(dtype, str) else np.dtype(dtype).name


def band_scalars(problem, int_type=np.int32):
    """The scalars every forward kernel takes after its arrays: ``softmax_scale * log2(e)``
    (float32: scores are kept in base 2), ``window_left``, ``window_right`` (``int_type``) and
    ``lse_batched``."""
    return (np.float32(problem.softmax_scale * LOG2E), int_type(problem.window_left),
            int_type(problem.window_right), bool(problem.lse_batched))


def with_overrides(config, overrides):
    """``config`` with the fields of ``overrides`` that are not None replaced; an unknown
    field is a TypeError naming it."""
    names = {f.name for f in dataclasses.fields(config)}
    for k in overrides:
        if k not in names:
            raise TypeError(f"{type(config).__module__}.Config has no field {k!r}")
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
