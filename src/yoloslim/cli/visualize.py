"""``yoloslim visualize``: feature-map grids of named layers for one image."""

from __future__ import annotations

import argparse

from yoloslim.cli.options import add_threads


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="save a grid image of chosen layers' feature maps for one input")
    p.add_argument("--weights", required=True, help="a yoloslim model file (.safetensors)")
    p.add_argument("--source", required=True, help="an image file")
    p.add_argument("--layer", action="append", required=True, metavar="NAME",
                   help="a layer name as `yoloslim info --layers` prints it (e.g. model.4); "
                        "repeat for several")
    p.add_argument("--out", default="runs/visualize", help="folder for the PNGs (default runs/visualize)")
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the model file's)")
    p.add_argument("--max-channels", type=int, default=64, help="channels shown per layer (default 64)")
    p.add_argument("--json", dest="json_file", help="also write the list of written files as JSON")
    p.add_argument("--mark-pruned", metavar="METHOD:RATIO",
                   help="frame in red the channels `prune --method METHOD --ratio RATIO` would remove "
                        "(e.g. l1:0.5; METHOD slim, l1 or l2)")
    add_threads(p)
    p.set_defaults(func=lambda a: _run(a))


def _run(a: argparse.Namespace) -> int:
    from yoloslim.workflows.visualize import visualize

    visualize(weights=a.weights, source=a.source, layers=a.layer, out=a.out, imgsz=a.imgsz,
              max_channels=a.max_channels, json_file=a.json_file, mark_pruned=a.mark_pruned)
    return 0
