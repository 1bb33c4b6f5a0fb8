"""``attn-numba explain [LOG] [--json] [--results DIR]``: the command line of
:func:`attn_numba.explain.explain_log`, printed by :mod:`.render`."""
from __future__ import annotations

import json
import os
import sys

from .core import explain_log
from .render import format_text, jsonable


def add_arguments(parser):
    parser.add_argument("log", nargs="?", default=None,
                        help="NVBench markdown log (default: the packaged A30 log)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--results", default=None,
                        help="results directory with */summary.json (default: the checkout's "
                             "results/, else the summary shipped in the package)")


def _print(text):
    """Print ``text``; a reader that closed the pipe (``| head``) ends the output quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # stdout is gone: point it at devnull so the interpreter's final flush cannot raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(args):
    """CLI entry: exit 0 with the report; 1 with one line on stderr for an unreadable or
    malformed log (never a traceback)."""
    try:
        res = explain_log(args.log, results_dir=args.results)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"attn-numba explain: {args.log or 'packaged log'}: {exc}", file=sys.stderr)
        return 1
    return _print(json.dumps(jsonable(res)) if args.json else format_text(res))
