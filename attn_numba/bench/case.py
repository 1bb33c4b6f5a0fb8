"""What a benchmark case is: one kernel (or peer) on one config, with its inputs; the
subclasses (:mod:`attn_numba.bench.cases`, :mod:`attn_numba.bench.torch_cases`,
:mod:`attn_numba.bench.native_peers`) define the check and the launch."""
from __future__ import annotations

import numpy as np

from .inputs import get_inputs


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
