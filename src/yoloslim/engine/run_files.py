"""What a training run leaves in its folder besides the weights: args.yaml, results.csv, γ histograms,
TensorBoard scalars; and the random-number state that makes ``--resume`` exact."""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from yoloslim.log import logger
from yoloslim.models.io import atomic_write


def new_run_dir(project: str | Path = "runs/train", name: str = "exp") -> Path:
    """A new numbered folder ``project/expN`` (N one more than the highest there)."""
    project = Path(project)
    used = [int(m.group(1)) for p in project.glob(f"{name}*") if (m := re.fullmatch(rf"{name}(\d+)", p.name))]
    run = project / f"{name}{max(used, default=0) + 1}"
    run.mkdir(parents=True, exist_ok=False)
    return run


def write_args(run_dir: Path, config: dict[str, Any], hyp: dict[str, Any]) -> Path:
    """``args.yaml``: the run's full settings, ``config`` (TrainConfig) and ``hyp`` (every hyper-parameter,
    augmentation included), as the resume state holds them."""
    path = Path(run_dir) / "args.yaml"
    text = yaml.safe_dump({"config": config, "hyp": hyp}, sort_keys=False, allow_unicode=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


class ResultsCSV:
    """``results.csv``: one row per epoch, appended (the whole file is rewritten, atomically, only
    when a row brings new columns, or when resuming drops the rows of unfinished epochs)."""

    def __init__(self, path: Path, keep_epochs_below: int | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.fields: list[str] = []
        if keep_epochs_below is not None and self.path.is_file():  # resuming: drop rows of unfinished epochs
            with self.path.open(newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < keep_epochs_below]
            self._rewrite()
        elif self.path.is_file():
            self.path.unlink()  # a new run in an old folder

    def add(self, row: dict[str, Any]) -> None:
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        if self.path.is_file() and list(dict.fromkeys([*self.fields, *row])) == self.fields:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        else:
            self._rewrite()

    def _rewrite(self) -> None:
        self.fields = list(dict.fromkeys(k for r in self.rows for k in r))

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.path, write)


class Scalars:
    """TensorBoard scalars and histograms when ``tensorboard`` is importable; otherwise nothing."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(str(run_dir))

    def add(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_histogram(tag, values, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def gamma_histogram(gammas: torch.Tensor, path: Path, epoch: int, threshold: float = 1e-2) -> None:
    """Write a PNG histogram of BN |γ| (log-spaced bins), marking ``threshold``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = gammas.numpy().clip(1e-6, None)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.logspace(-6, max(np.log10(g.max()) + 0.1, 0.5), 80)
    ax.hist(g, bins=bins, color="#3b6ea5")
    ax.set_xscale("log")
    ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"|γ| < {threshold:g}: "
               f"{float((gammas < threshold).float().mean()):.1%}")
    ax.set_xlabel("BN |γ|")
    ax.set_ylabel("channels")
    ax.set_title(f"BN γ, epoch {epoch}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain data (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "mt": list(mt), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError as e:  # a different number of GPUs
            logger.warning(f"CUDA random state not restored ({e})")
