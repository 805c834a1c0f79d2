"""``data check``: statistics of a data set and every problem in it, file by file."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from yoloslim.data.dataset import load_data
from yoloslim.data.images import verify_image
from yoloslim.data.source import DataSource, Problem

# Box size = sqrt(box area / image area); the histogram's bin edges.
SIZE_BINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 1.0)


@dataclass
class CheckReport:
    """The result of checking a data set.

    Attributes:
        source: the data set as read (only usable samples in its splits).
        problems: every problem, including images that decode badly.
        images: usable images per split.
        backgrounds: images without objects per split.
        boxes: per split, boxes per class name.
        difficult: per split, boxes marked difficult.
        size_hist: per split, box counts per bin of :data:`SIZE_BINS`.
    """

    source: DataSource
    problems: list[Problem] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)
    backgrounds: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, dict[str, int]] = field(default_factory=dict)
    difficult: dict[str, int] = field(default_factory=dict)
    size_hist: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict:
        """A JSON-ready dict of the statistics and problems."""
        return {"root": str(self.source.root), "format": self.source.fmt, "names": self.source.names,
                "images": self.images, "backgrounds": self.backgrounds, "boxes": self.boxes,
                "difficult": self.difficult, "size_bins": list(SIZE_BINS), "size_hist": self.size_hist,
                "problems": [{"file": str(p.path), "problem": p.message, "skipped": p.skipped}
                             for p in self.problems]}


def check_data(path: str | Path, names_file: str | Path | None = None, progress: bool = True) -> CheckReport:
    """Read a data set (data.yaml or VOC root), decode every image, and gather statistics and problems."""
    source = load_data(path, names_file=names_file, warn=False)
    report = CheckReport(source=source, problems=list(source.problems))
    seen: dict[Path, str] = {}
    for split, samples in source.splits.items():
        good = []
        for s in tqdm(samples, desc=f"checking {split}", unit="img", disable=not progress, leave=False):
            bad = verify_image(Path(s.path), decode=True)
            if bad:
                report.problems.append(Problem(s.path, bad))
                continue
            if s.path in seen and seen[s.path] != split:
                report.problems.append(Problem(s.path, f"in both {seen[s.path]} and {split}", skipped=False))
            seen[s.path] = split
            good.append(s)
        counts = np.zeros(len(source.names), int)
        sizes = []
        for s in good:
            counts += np.bincount(s.classes, minlength=len(source.names))
            wh = s.boxes[:, 2:] - s.boxes[:, :2]
            sizes.append(np.sqrt(wh.prod(1) / float(s.width * s.height)))
        sizes_all = np.concatenate(sizes) if sizes else np.zeros(0)
        report.images[split] = len(good)
        report.backgrounds[split] = sum(len(s.classes) == 0 for s in good)
        report.boxes[split] = {n: int(c) for n, c in zip(source.names, counts, strict=True)}
        report.difficult[split] = int(sum(s.difficult.sum() for s in good))
        report.size_hist[split] = np.histogram(sizes_all.clip(0, 1), bins=SIZE_BINS)[0].tolist()
        if not good:
            report.problems.append(Problem(source.root, f"the {split} split has no usable images"))
    if not source.splits:
        report.problems.append(Problem(source.root, "no images in any split"))
    return report


def format_report(report: CheckReport) -> str:
    """The report as text: per-split images and boxes per class, a size histogram, then the problems."""
    src = report.source
    splits = list(report.images)
    lines = [f"{src.root} ({src.fmt}, {len(src.names)} classes)", ""]
    w = max([len("background"), *(len(n) for n in src.names)])
    lines.append("  ".join(["class".ljust(w), *(s.rjust(8) for s in splits)]))
    lines.append("  ".join(["images".ljust(w), *(f"{report.images[s]:8d}" for s in splits)]))
    lines.append("  ".join(["background".ljust(w), *(f"{report.backgrounds[s]:8d}" for s in splits)]))
    for n in src.names:
        lines.append("  ".join([n.ljust(w), *(f"{report.boxes[s][n]:8d}" for s in splits)]))
    total = {s: sum(report.boxes[s].values()) for s in splits}
    lines.append("  ".join(["all boxes".ljust(w), *(f"{total[s]:8d}" for s in splits)]))
    if any(report.difficult.values()):
        lines.append("  ".join(["difficult".ljust(w), *(f"{report.difficult[s]:8d}" for s in splits)]))
    lines += ["", "box size, sqrt(box area / image area), all splits:"]
    hist = np.sum([report.size_hist[s] for s in splits], axis=0) if splits else np.zeros(len(SIZE_BINS) - 1)
    peak = max(int(hist.max()), 1) if len(hist) else 1
    for k, c in enumerate(hist):
        label = f"{SIZE_BINS[k] * 100:3.0f}-{SIZE_BINS[k + 1] * 100:3.0f} %"
        lines.append(f"  {label}  {int(c):7d}  {'#' * round(40 * c / peak)}")
    lines.append("")
    if not report.problems:
        lines.append("no problems found")
        return "\n".join(lines)
    by_file: dict[str, list[Problem]] = defaultdict(list)
    for p in report.problems:
        by_file[str(p.path)].append(p)
    n_skip = len({str(p.path) for p in report.problems if p.skipped})
    lines.append(f"{len(report.problems)} problem(s) in {len(by_file)} file(s), {n_skip} sample(s) skipped:")
    for f in sorted(by_file):
        for p in by_file[f]:
            lines.append(f"  {f}: {p.message}{' [skipped]' if p.skipped else ''}")
    return "\n".join(lines)
