"""Loader throughput: images/s at 320 px with mosaic (and the default augmentations), 2 workers.

A synthetic data set is written to a temporary folder, then the training loader is run over it for a
few epochs; the figure is the median over epochs of images per second (the first batch of each
epoch, which includes starting the workers, is counted).

    .venv/bin/python bench/loader.py [--images 256] [--imgsz 320] [--batch 16] [--workers 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from yoloslim.data.augment import AugmentConfig
from yoloslim.data.dataset import DetectionDataset, create_loader, load_data
from yoloslim.data.synth import synthesize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cache", action="store_true", help="keep the images in RAM")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data = synthesize(tmp, images=a.images, imgsz=a.imgsz, seed=0, val_ratio=0.01, progress=False)
        t_synth = time.perf_counter() - t0
        ds = DetectionDataset(load_data(data).splits["train"], a.imgsz, augment=AugmentConfig(mosaic=1.0),
                              cache=a.cache, seed=0)
        loader = create_loader(ds, a.batch, shuffle=True, workers=a.workers, seed=0)
        rates = []
        for epoch in range(a.epochs):
            ds.set_epoch(epoch)
            n = 0
            t0 = time.perf_counter()
            for imgs, _targets, _paths, _infos in loader:
                n += len(imgs)
            rates.append(n / (time.perf_counter() - t0))
    cmd = "python bench/loader.py " + " ".join(sys.argv[1:])
    print(f"synthesized {a.images} images of {a.imgsz} px in {t_synth:.1f} s "
          f"({a.images / t_synth:.0f} images/s)")
    print(f"loader, {a.imgsz} px, mosaic 1.0 + affine + HSV + flip, batch {a.batch}, {a.workers} workers"
          f"{', RAM cache' if a.cache else ''}: {statistics.median(rates):.0f} images/s "
          f"(median of {a.epochs} epochs: {', '.join(f'{r:.0f}' for r in rates)})")
    print(f"command: {cmd.strip()}")


if __name__ == "__main__":
    main()
