"""Which EMA average suits a run? One training run carries several EMAs and saves each as it goes.

Training never reads the EMA, so the run (and the ``last.safetensors`` it writes, with the loop's own
EMA) is the one ``yoloslim train`` gives alone; beside it, one extra EMA per horizon H (in epochs:
:meth:`ModelEMA.for_epoch_length` with ``horizon_epochs=H``: decay ``1 − 1/(H · updates per epoch)``,
ramp one epoch; ``yolov5``: YOLOv5's constants, the loop's EMA before session 14) is written every
``--save-every`` epochs to ``<run>/ema-horizons/h{H}-e{epoch}.safetensors``, a model file that
``yoloslim val`` reads. The command is ``yoloslim train`` (the run is its ``--out``) or ``yoloslim demo``
(two runs: ``<--out>/train`` and ``<--out>/finetune``). Session 14 used it on YOLOX-s, session 15 on the
demo (docs/BENCHMARKS.md)::

    python bench/ema_horizons.py --horizons 2,5,15 --save-every 10 -- \\
        train --data W/data/data.yaml --weights W/models/baseline.safetensors --epochs 100 --batch 8 \\
        --nominal-batch 8 --imgsz 192 --optimizer AdamW --hyp hyp-lr25.yaml --cache --out W/runs/control
    yoloslim val --weights W/runs/control/ema-horizons/h5-e100.safetensors --data W/data/data.yaml --imgsz 192
    python bench/ema_horizons.py --horizons yolov5,1,2,5 --save-every 5 -- demo --out D
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_hook import LoopEMA, loop_ema, train_with_ema  # noqa: E402

from yoloslim.engine.ema import ModelEMA
from yoloslim.models.io import load_model, save_model

YOLOV5 = "yolov5"  # the horizon name of YOLOv5's own constants (ModelEMA's defaults)
RUNS = {"train": ("",), "demo": ("train", "finetune")}  # the run folders each command trains, in order


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        sys.exit("usage: ema_horizons.py [--horizons 2,5,15] [--save-every 10] -- train|demo ARGS (with --out DIR)")
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--horizons", default="2,5,15", help=f"EMA averages to keep, in epochs ({YOLOV5}: its constants)")
    p.add_argument("--save-every", type=int, default=10, help="epochs between saves of each extra EMA")
    args, command = p.parse_args(argv[:cut]), argv[cut + 1:]
    try:
        args.horizons = [h if h == YOLOV5 else float(h) for h in args.horizons.split(",")]
    except ValueError:
        p.error(f"--horizons takes numbers of epochs (or {YOLOV5}) separated by commas, got {args.horizons!r}")
    if min((h for h in args.horizons if h != YOLOV5), default=1) <= 0 or args.save_every < 1:
        p.error("--horizons must be positive and --save-every at least 1")
    if command[:1] not in (["train"], ["demo"]) or "--out" not in command:
        sys.exit("the arguments after -- are a `yoloslim train` or `yoloslim demo` command with --out DIR")
    return args, command


def main(argv: list[str] | None = None) -> int:
    args, command = parse(sys.argv[1:] if argv is None else argv)
    horizons = args.horizons
    out = Path(command[command.index("--out") + 1])
    runs = [out / name for name in RUNS[command[0]]]
    built = []  # the EMAs the command's trainings built, in order

    class Several(LoopEMA):
        """The loop's EMA, plus one per horizon, each updated with it; their weights saved as they go."""

        def __init__(self, model: nn.Module, per_epoch: int, horizon_epochs: float) -> None:
            super().__init__(model, per_epoch, horizon_epochs)
            self.extra = {h: ModelEMA(model) if h == YOLOV5 else loop_ema(model, per_epoch, horizon_epochs=h)
                          for h in horizons}
            self.folder = runs[min(len(built), len(runs) - 1)] / "ema-horizons"
            built.append(self)

        def update(self, model: nn.Module) -> None:
            super().update(model)
            for ema in self.extra.values():
                ema.update(model)
            if self.updates % (args.save_every * self.per_epoch) == 0:
                self.folder.mkdir(parents=True, exist_ok=True)
                epoch = self.updates // self.per_epoch
                for h, ema in self.extra.items():
                    save_file({k: v.detach().cpu().contiguous() for k, v in ema.ema.state_dict().items()},
                              str(self.folder / f"h{h if h == YOLOV5 else format(h, 'g')}-e{epoch:03d}.weights"))

    code = train_with_ema(Several, command)
    if code != 0:  # yoloslim has said why
        return code
    for run in runs:
        folder = run / "ema-horizons"
        if not folder.is_dir():
            continue
        model, info = load_model(run / "weights" / "last.safetensors")  # the architecture, names and history
        for weights in sorted(folder.glob("*.weights")):
            model.load_state_dict(load_file(str(weights)))
            save_model(weights.with_suffix(".safetensors"), model, info)
            weights.unlink()
        print(f"extra EMAs in {folder}")
    return code


if __name__ == "__main__":
    sys.exit(main())
