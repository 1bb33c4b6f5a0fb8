"""The ``attn-numba`` command: bench, plot, explain, report, notebooks.

Each sub-command lives in its own module, which defines ``add_arguments(parser)`` and
``main(args) -> int`` (and may define ``help_texts() -> (description, epilog)``, computed only
when its ``--help`` is printed); this file only wires them together, importing lazily so that
``attn-numba --help`` and ``explain``/``plot`` work on a machine with no GPU. Help texts are
plain text with examples.
"""
import argparse
import importlib
import sys
import textwrap

from . import __version__

#: The install commands the README gives; every message that suggests an install uses these.
INSTALL_DEV = 'python -m pip install -e ".[dev]"'
INSTALL_GPU = 'python -m pip install -e ".[dev,gpu]"'

DESCRIPTION = ("attn-numba: sliding-window, GQA and varlen attention kernels in Numba CUDA. "
               "Explain the NVBench log that started the project, benchmark the kernels, draw "
               "the figures and write the report.")


def examples(*pairs, width=79, column=36):
    """An ``examples:`` block of (command, what it does) pairs, each note beside its command
    when it fits in ``width`` columns, else on the next line."""
    lines = ["examples:"]
    for cmd, note in pairs:
        head = "  " + cmd
        if not note:
            lines.append(head)
        elif len(head) <= column - 2 and column + len(note) <= width:
            lines.append(head.ljust(column) + note)
        else:
            lines += [head, " " * 6 + note]
    return "\n".join(lines)


EPILOG = examples(
    ("attn-numba report", "explain the log, plot, write REPORT.md"),
    ("attn-numba explain", "diagnose the packaged A30 NVBench log"),
    ("attn-numba bench --quick", "benchmark on a GPU (needs the gpu extra)"),
    ("attn-numba plot --results results --out figures", ""),
    ("attn-numba notebooks --check-sync", ""),
    ("attn-numba COMMAND --help", "the options of one command"),
) + f"""

No GPU? explain, plot, report and notebooks run without one (report then uses
the committed results). bench needs an NVIDIA GPU and the gpu extra:
  {INSTALL_GPU}"""

#: name: (module, one-line help, examples shown under the command's --help)
COMMANDS = {
    "bench": ("attn_numba.bench.cli", "run the NVBench (cuda-bench) benchmark run_mha_fwd (GPU)",
              ""),
    "plot": ("attn_numba.plots", "draw figures from committed results (no GPU needed)", examples(
        ("attn-numba plot", "results/ to figures/"),
        ("attn-numba plot --results results/h200 --out my_figures --log none", ""))),
    "explain": ("attn_numba.explain", "diagnose an NVBench log of run_mha_fwd (no GPU needed)",
                examples(("attn-numba explain", "the packaged A30 log"),
                         ("attn-numba explain my_run.log", "your own NVBench markdown log"),
                         ("attn-numba explain --json > out.json", "one JSON object"))),
    "report": ("attn_numba.report",
               "the main job: explain the log, bench or reuse results, plot, write a report",
               examples(("attn-numba report", "benchmarks run only when a GPU is present"),
                        ("attn-numba report --no-bench", "the committed results, even on a GPU"),
                        ("attn-numba report --figures my_figures", "figures and REPORT.md there"))),
    "notebooks": ("attn_numba.notebooks_run",
                  "execute the notebooks (nbclient); --write puts the outputs into the .ipynb",
                  examples(("attn-numba notebooks --check-sync", "each .py/.ipynb pair agrees"),
                           ("attn-numba notebooks --only 01 02", "run two, write nothing"),
                           ("attn-numba notebooks --write", "execute and store the outputs"))
                  + f"\n\nNeeds the dev extra: {INSTALL_DEV}"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose description and epilog may come from a callable, run only when
    the help is printed (bench lists the kernels, which imports every kernel module)."""

    help_texts = None

    def format_help(self):
        if self.help_texts is not None:
            self.description, self.epilog = self.help_texts()
            self.help_texts = None
        return super().format_help()


def build_parser():
    parser = _Parser(prog="attn-numba", description=textwrap.fill(DESCRIPTION, 79), epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"attn-numba {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module, helptext, examples) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:]
                           + ".", epilog=examples or None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a sub-command this build does not have yet
            if exc.name is None or not (module + ".").startswith(exc.name + "."):
                raise
            p.set_defaults(_missing=True)
            continue
        mod.add_arguments(p)
        p.help_texts = getattr(mod, "help_texts", None)
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
