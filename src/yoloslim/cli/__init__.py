"""The ``yoloslim`` command: one subcommand per stage, each in its own module of this package.

Every module here has ``add(subparsers)`` that declares the flags and sets ``func`` to a function
taking the parsed arguments, which calls one function in :mod:`yoloslim.workflows`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from yoloslim import __version__
from yoloslim.cli.options import add_aliases
from yoloslim.device import set_threads
from yoloslim.errors import UserError

# Subcommands in the order `--help` lists them; each is a module of this package.
COMMANDS = ("demo", "data", "train", "prune", "val", "predict", "export", "bench", "info", "visualize", "import_",
            "sensitivity")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yoloslim",
        description="Make YOLO detectors smaller and faster: train, sparsity-train, prune, fine-tune, evaluate, "
                    "export.",
    )
    parser.add_argument("--version", action="version", version=f"yoloslim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"yoloslim.cli.{name}").add(sub)
    add_aliases(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if hasattr(args, "threads"):  # one meaning everywhere: PyTorch's (and ONNX Runtime's) intra-op threads
            args.threads = set_threads(args.threads)
        result = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e.filename or e}: no such file or directory", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt as e:  # a TrainingInterrupted says how to resume
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
