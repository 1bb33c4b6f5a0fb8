"""NVBench (cuda-bench) benchmark ``run_mha_fwd`` of the attention kernels and two PyTorch peers.

Modules:

* :mod:`.grid`: the axes (the A30 log's grid by default), derived columns (tensor sizes, exact
  windowed FLOPs, the log's dense FLOPs, minimum bytes); pure Python, no GPU.
* :mod:`.cases`: one benchmark case per (kernel, config): inputs, the correctness check against
  :mod:`attn_numba.reference`, and the launch on a given stream. Shared by the NVBench run and
  the ``--simulate`` run.
* :mod:`.nvbench_def`: the registered NVBench benchmark (axes, summaries, ``state.exec``).
* :mod:`.ceilings`: device ceilings measured with PyTorch (copy bandwidth, fp16 and fp32 matmul).
* :mod:`.summary`: NVBench JSON -> flat ``summary.json`` records, and its schema check.
* :mod:`.cli`: ``attn-numba bench``.

Nothing here imports ``cuda.bench`` or ``torch`` at module import time, so the package loads on
a CPU-only machine.
"""
