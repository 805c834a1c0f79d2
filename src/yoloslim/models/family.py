"""One record per model family: everything yoloslim must know to build, train, decode and import it.

Each family module (:mod:`yoloslim.models.yolov5`, :mod:`~yoloslim.models.yolov3`,
:mod:`~yoloslim.models.yolox`) defines its ``FAMILY`` next to its builder and presets, and
:data:`yoloslim.models.FAMILIES` registers them, once. The model registry (``MODELS``, ``build_model``),
the loss (:func:`yoloslim.loss.make_loss`), box decoding (:func:`yoloslim.models.decode.decode_style`),
the input convention (:attr:`ArchSpec.input_bgr` / :attr:`ArchSpec.input_scale`) and
``yoloslim import --from`` read it; a new family joins them all by adding one record.

The loss and the importers are named as ``"module:attribute"`` strings and imported when first
asked for: the loss modules and the importers import :mod:`yoloslim.models`, so holding them as
objects here would make the model package import them back (a cycle).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from yoloslim.models.spec import ArchSpec

DECODE_STYLES = ("yolov5", "darknet", "anchor_free", "dfl")  # see yoloslim.models.decode.Decoder


@dataclass(frozen=True)
class Family:
    """A model family, as plain data.

    Attributes:
        name: the value of ``ArchSpec.family`` (``"yolov5"``, ``"yolov3"``, ``"yolox"``).
        builder: the ``nn.Module`` class built as ``builder(spec)``.
        presets: preset name -> ``fn(nc)`` returning its full spec.
        loss: ``"module:Class"`` of the loss, built as ``Class(model, hyp)`` (see :mod:`yoloslim.loss`).
        decode: how the raw maps decode by default, one of :data:`DECODE_STYLES` (a spec's
            ``options["decode"]`` may override it).
        input_bgr: the model takes BGR pixels (else RGB).
        input_scale: factor applied to 0-255 pixels before the model (1/255 or 1).
        strides: the head's strides in the family's presets (a darknet cfg may have fewer levels).
        importers: ``yoloslim import --from`` source -> ``"module:function"`` of its importer.
    """

    name: str
    builder: Callable[[ArchSpec], nn.Module]
    presets: Mapping[str, Callable[[int], ArchSpec]]
    loss: str
    decode: str
    input_bgr: bool
    input_scale: float
    strides: tuple[int, ...] = (8, 16, 32)
    importers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.decode not in DECODE_STYLES:
            raise ValueError(f"family {self.name!r}: decode {self.decode!r} is not one of {DECODE_STYLES}")

    def input_options(self) -> dict[str, Any]:
        """The input convention as a spec's ``options`` hold it (written by presets and importers)."""
        return {"input_bgr": self.input_bgr, "input_scale": self.input_scale}

    def loss_class(self) -> Callable[..., Any]:
        """The loss class (imported on first use)."""
        return resolve(self.loss)

    def importer(self, source: str) -> Callable[..., Any]:
        """The importer of ``--from source`` (imported on first use)."""
        return resolve(self.importers[source])


def resolve(ref: str) -> Any:
    """The object a ``"package.module:attribute"`` reference names."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
