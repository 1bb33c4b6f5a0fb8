"""``attn-numba explain``: diagnose any NVBench markdown log of the ``run_mha_fwd`` benchmark.

Parts, each testable alone:

* :mod:`.parse` -- the log's text to devices, Log runs and result tables
  (:class:`LogParseError`, a ValueError naming the line, for malformed input);
* :mod:`.rows` -- one row per state with its exact work; grouping by the axes outside the
  work formula (Kernel, other string axes, the device);
* :mod:`.fit` -- ``t = a + b*work`` per group, the verdict rule, host time per call and
  Batch/Cold;
* :mod:`.diagnose` -- one function per symptom, each emitting sentences only when its premise
  holds in the group;
* :mod:`.context` -- roofline, committed results, the pathology reproduction;
* :mod:`.render` -- text, Markdown and JSON output (a library: it imports no CLI);
* :mod:`.core` -- :func:`explain_log`; :mod:`.cli` -- the command line.

Verdict rule (per group; the log is overhead-dominated if any group is)::

    overhead-dominated  iff  fixed_overhead_s >= 0.5 * median(t)  and  work_exponent < 0.5
    work-proportional   otherwise
    undetermined        when fewer than two distinct work values have a time, or the
                        rows' minimum bytes span less than 2x (one problem size)
"""
from .context import PEAK_FLOP_PER_CLK_SM, load_pathology, load_summaries, roofline
from .core import PACKAGED_LOG, explain_group, explain_log, read_log
from .diagnose import NVBENCH_DEFAULTS, NVBENCH_MIN_SAMPLES_FOR_NOISE, SYMPTOMS
from .fit import (FLAT_EXPONENT, OVERHEAD_FRACTION, batch_over_cold, fit_group, fit_overhead,
                  host_s_per_call, time_of, verdict_of)
from .parse import LogParseError, parse_log, parse_value, parse_warning
from .cli import add_arguments, main
from .render import fmt_t, format_text, groups_markdown, jsonable
from .rows import AXES, build_rows, group_rows, row_work

# names used before the module became a package (bench/pathology.py, notebook 06)
_row_work = row_work
_jsonable = jsonable
_fmt_t = fmt_t
_time_of = time_of

__all__ = ["AXES", "FLAT_EXPONENT", "LogParseError", "NVBENCH_DEFAULTS",
           "NVBENCH_MIN_SAMPLES_FOR_NOISE", "OVERHEAD_FRACTION", "PACKAGED_LOG",
           "PEAK_FLOP_PER_CLK_SM", "SYMPTOMS", "add_arguments", "batch_over_cold", "build_rows",
           "explain_group", "explain_log", "fit_group", "fit_overhead", "fmt_t", "format_text",
           "groups_markdown",
           "group_rows", "host_s_per_call", "jsonable", "load_pathology", "load_summaries",
           "main", "parse_log", "parse_value", "parse_warning", "read_log", "roofline",
           "row_work", "time_of", "verdict_of"]
