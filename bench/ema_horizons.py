"""Which EMA average suits a run? One training run carries several EMAs and saves each as it goes.

Training never reads the EMA, so the run (and the ``last.safetensors`` it writes, with the loop's own
EMA) is the one ``yoloslim train`` gives alone; beside it, one extra EMA per horizon H (in epochs:
:meth:`ModelEMA.for_epoch_length` with ``horizon_epochs=H``: decay ``1 − 1/(H · updates per epoch)``,
ramp one epoch) is written every ``--save-every`` epochs to ``<--out>/ema-horizons/h{H}-e{epoch}.safetensors``, a
model file that ``yoloslim val`` reads. Session 14 used it on YOLOX-s (docs/BENCHMARKS.md)::

    python bench/ema_horizons.py --horizons 2,5,15 --save-every 10 -- \\
        train --data W/data/data.yaml --weights W/models/baseline.safetensors --epochs 100 --batch 8 \\
        --nominal-batch 8 --imgsz 192 --optimizer AdamW --hyp hyp-lr25.yaml --cache --out W/runs/control
    yoloslim val --weights W/runs/control/ema-horizons/h5-e100.safetensors --data W/data/data.yaml --imgsz 192
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_hook import LoopEMA, loop_ema, train_with_ema  # noqa: E402

from yoloslim.models.io import load_model, save_model


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        sys.exit("usage: ema_horizons.py [--horizons 2,5,15] [--save-every 10] -- train ARGS (with --out DIR)")
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--horizons", default="2,5,15", help="EMA averages to keep, in epochs")
    p.add_argument("--save-every", type=int, default=10, help="epochs between saves of each extra EMA")
    args, train_argv = p.parse_args(argv[:cut]), argv[cut + 1:]
    try:
        args.horizons = [float(h) for h in args.horizons.split(",")]
    except ValueError:
        p.error(f"--horizons takes numbers of epochs separated by commas, got {args.horizons!r}")
    if min(args.horizons) <= 0 or args.save_every < 1:
        p.error("--horizons must be positive and --save-every at least 1")
    if train_argv[:1] != ["train"] or "--out" not in train_argv:
        sys.exit("the arguments after -- are a `yoloslim train` command with --out DIR")
    return args, train_argv


def main(argv: list[str] | None = None) -> int:
    args, train_argv = parse(sys.argv[1:] if argv is None else argv)
    horizons = args.horizons
    run = Path(train_argv[train_argv.index("--out") + 1])
    out = run / "ema-horizons"

    class Several(LoopEMA):
        """The loop's EMA, plus one per horizon, each updated with it; their weights saved as they go."""

        def __init__(self, model: nn.Module, per_epoch: int) -> None:
            super().__init__(model, per_epoch)
            self.extra = {h: loop_ema(model, per_epoch, horizon_epochs=h) for h in horizons}

        def update(self, model: nn.Module) -> None:
            super().update(model)
            for ema in self.extra.values():
                ema.update(model)
            if self.updates % (args.save_every * self.per_epoch) == 0:
                out.mkdir(parents=True, exist_ok=True)
                epoch = self.updates // self.per_epoch
                for h, ema in self.extra.items():
                    save_file({k: v.detach().cpu().contiguous() for k, v in ema.ema.state_dict().items()},
                              str(out / f"h{h:g}-e{epoch:03d}.weights"))

    code = train_with_ema(Several, train_argv)
    if code != 0:  # yoloslim train has said why
        return code
    model, info = load_model(run / "weights" / "last.safetensors")  # the architecture, names and history
    for weights in sorted(out.glob("*.weights")):
        model.load_state_dict(load_file(str(weights)))
        save_model(weights.with_suffix(".safetensors"), model, info)
        weights.unlink()
    print(f"extra EMAs in {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
