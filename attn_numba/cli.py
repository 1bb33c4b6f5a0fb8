"""``attn-numba``: bench, plot, explain, report, notebooks.

Each sub-command lives in its own module, which defines ``add_arguments(parser)`` and
``main(args) -> int``; this file only wires them together, importing lazily so that
``attn-numba --help`` and ``explain``/``plot`` work on a machine with no GPU.
"""
import argparse
import importlib
import sys

COMMANDS = {
    "bench": ("attn_numba.bench.cli", "run the NVBench (cuda-bench) benchmark run_mha_fwd"),
    "plot": ("attn_numba.plots", "draw figures from committed results (no GPU needed)"),
    "explain": ("attn_numba.explain", "diagnose an NVBench log of run_mha_fwd"),
    "report": ("attn_numba.report", "the main job: explain the log, bench or reuse results, plot, write a report"),
    "notebooks": ("attn_numba.notebooks_run", "execute the notebooks (nbclient); --write puts the outputs into the .ipynb"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="attn-numba", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:  # a sub-command this build does not have yet
            if exc.name is None or not (module + ".").startswith(exc.name + "."):
                raise
            p.set_defaults(_missing=True)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if getattr(args, "_missing", False):
        print(f"attn-numba {args.command}: not available in this build", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
