"""``yoloslim demo``: the main job on the built-in synthetic data set."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_threads


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on the built-in synthetic data set: train, prune, "
                                    "fine-tune with distillation, before/after")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a small data set and short trainings (about 2 minutes)")
    p.add_argument("--json", dest="json_file", help="also write a summary as JSON")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--finetune-epochs", type=int, default=None,
                   help="fine-tuning epochs of the pruned model (default: the preset's)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader processes (default: 0 with --quick, 2 otherwise)")
    add_threads(p)
    p.set_defaults(func=_run)


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.demo import demo

    demo(out=a.out, quick=a.quick, json_file=a.json_file, epochs=a.epochs,
         finetune_epochs=a.finetune_epochs, workers=a.workers)
    return 0
