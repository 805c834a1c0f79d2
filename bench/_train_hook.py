"""The bench probes' one hook into training: run ``yoloslim train`` with the loop's EMA replaced by a subclass.

The EMA is updated right after every optimizer step and is what the loop validates and saves, so a
subclass of :class:`LoopEMA` can watch (or act on) the weights at each step without a change to the
training loop itself.
"""

from __future__ import annotations

from torch import nn

from yoloslim.cli import main as cli_main
from yoloslim.engine.ema import ModelEMA

loop_ema = ModelEMA.for_epoch_length  # bound before any patching: the loop's EMA, even while it is replaced


class LoopEMA(ModelEMA):
    """The EMA the training loop builds (:meth:`ModelEMA.for_epoch_length`), for subclasses to extend."""

    def __init__(self, model: nn.Module, per_epoch: int, horizon_epochs: float) -> None:
        own = loop_ema(model, per_epoch, horizon_epochs)
        super().__init__(model, decay=own.decay, tau=own.tau)
        self.per_epoch = max(per_epoch, 1)


def train_with_ema(ema_class: type[LoopEMA], argv: list[str]) -> int:
    """``yoloslim *argv`` (a command that trains: ``train``, ``demo``) with ``ema_class`` as the loop's EMA."""
    original = ModelEMA.__dict__["for_epoch_length"]
    ModelEMA.for_epoch_length = staticmethod(ema_class)  # type: ignore[method-assign]
    try:
        return cli_main(argv)
    finally:
        ModelEMA.for_epoch_length = original  # type: ignore[method-assign]
