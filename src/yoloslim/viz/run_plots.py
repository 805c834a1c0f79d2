"""All the pictures of one validation or one training run, written into its folder.

After ``yoloslim val --plots DIR``: ``PR_curve.png``, ``F1_curve.png``, ``confusion_matrix.png``,
``val_batch0_labels.jpg`` and ``val_batch0_pred.jpg``. After training, in the run folder, the same
for the best model on the val split, plus ``results.png`` (from results.csv) and ``labels.png`` (the
training labels). Each writer returns the numbers it drew; :func:`write_val_plots` and
:func:`write_training_plots` return them per file name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from yoloslim.data.source import Sample
from yoloslim.engine.evaluate import EvalResult, evaluate
from yoloslim.log import logger
from yoloslim.models.io import load_model
from yoloslim.viz.confusion import confusion_of, plot_confusion_matrix
from yoloslim.viz.plots import plot_f1_curve, plot_labels, plot_pr_curve, plot_results
from yoloslim.viz.val_images import write_val_images


def write_val_plots(out_dir: str | Path, result: EvalResult, samples: Sequence[Sample]) -> dict[str, Any]:
    """PR and F1 curves, confusion matrix, ground truth and predictions of an evaluation.

    Args:
        out_dir: the folder (created).
        result: :func:`~yoloslim.engine.evaluate.evaluate`'s result.
        samples: the evaluated samples (the loader's ``dataset.samples``; image id = index).

    Returns:
        file name -> the numbers drawn in it.
    """
    out = Path(out_dir)
    det = result.detections
    if det is None:
        raise ValueError("the evaluation result holds no detections to plot")
    curves = det.curves()
    drawn = {
        "PR_curve.png": plot_pr_curve(curves, out / "PR_curve.png"),
        "F1_curve.png": plot_f1_curve(curves, out / "F1_curve.png"),
        "confusion_matrix.png": plot_confusion_matrix(confusion_of(det), det.names, out / "confusion_matrix.png"),
    }
    images = write_val_images(det, samples, out)
    drawn["val_batch0_labels.jpg"] = drawn["val_batch0_pred.jpg"] = images
    return drawn


def write_training_plots(run_dir: str | Path, best: str | Path, val_loader: Any, train_samples: Sequence[Sample],
                         names: list[str], device: str | torch.device = "cpu") -> dict[str, Any]:
    """The end-of-training pictures: ``results.png``, ``labels.png``, and the val pictures of ``best``
    (evaluated once more on the val split, as the final numbers of a run are).

    Returns:
        file name -> the numbers drawn in it.
    """
    run = Path(run_dir)
    drawn: dict[str, Any] = {}
    if (run / "results.csv").is_file():
        drawn["results.png"] = plot_results(run / "results.csv", run / "results.png")
    drawn["labels.png"] = plot_labels(train_samples, names, run / "labels.png")
    if val_loader is not None and Path(best).is_file():
        model, _ = load_model(best, device=device)
        result = evaluate(model, val_loader, names, device=device, progress=False)
        drawn.update(write_val_plots(run, result, val_loader.dataset.samples))
    logger.info(f"pictures of the run: {', '.join(sorted(drawn))} in {run}")
    return drawn
