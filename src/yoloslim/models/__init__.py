"""Model registry: every preset by name, and one builder for any spec."""

from __future__ import annotations

from collections.abc import Callable
from difflib import get_close_matches

import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models import yolov3, yolov5, yolov8, yolox
from yoloslim.models.family import Family
from yoloslim.models.spec import ArchSpec

# family name (ArchSpec.family) -> its record. The one place a family is registered.
FAMILIES: dict[str, Family] = {f.name: f for f in (yolov5.FAMILY, yolox.FAMILY, yolov3.FAMILY, yolov8.FAMILY)}

# model name -> function(nc) returning the preset spec, from the families' presets.
MODELS: dict[str, Callable[[int], ArchSpec]] = {name: fn for f in FAMILIES.values() for name, fn in f.presets.items()}

MAX_PARAMS = 1_000_000_000  # yolov5x has 87 M; a file's spec beyond this is refused


def family_of(spec: ArchSpec) -> Family:
    """The record of ``spec``'s family; an unknown family is a :class:`UserError`."""
    if spec.family not in FAMILIES:
        raise UserError(f"unknown model family {spec.family!r}; this yoloslim knows {', '.join(FAMILIES)}")
    return FAMILIES[spec.family]


def model_spec(name: str, nc: int = 80) -> ArchSpec:
    """Preset spec by model name, e.g. ``model_spec("yolov5s", nc=20)``."""
    if name not in MODELS:
        close = get_close_matches(name, list(MODELS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else f"; choose from {', '.join(MODELS)}"
        raise UserError(f"unknown model {name!r}{hint}")
    if nc < 1:
        raise UserError(f"a model needs at least one class, got nc={nc}")
    return MODELS[name](nc)


def build_model(spec: ArchSpec) -> nn.Module:
    """Build the detector a spec describes (random weights)."""
    return family_of(spec).builder(spec)


def check_model_size(spec: ArchSpec, source: str) -> None:
    """Build ``spec`` on the meta device (no memory) and refuse it when it does not build or holds more
    than :data:`MAX_PARAMS` parameters: a file's spec is checked before any weight is allocated."""
    try:
        with torch.device("meta"):
            model = build_model(spec)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, ZeroDivisionError) as e:
        raise UserError(f"{source}: the architecture spec does not build ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMS:
        raise UserError(f"{source}: the architecture spec describes {n:,} parameters, more than "
                        f"{MAX_PARAMS:,} (refused before allocating them)")


def create_model(name: str, nc: int = 80) -> nn.Module:
    """Build a preset with random weights."""
    return build_model(model_spec(name, nc))
