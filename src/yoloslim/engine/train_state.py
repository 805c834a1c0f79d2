"""Training state for ``--resume``, as plain data.

Training state (optimizer, EMA, epoch, RNG) is a dict of tensors and numbers written with
``torch.save`` and read back with ``weights_only=True``; the write goes to a temporary file that is
renamed over the target, so a crash never leaves half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from yoloslim.errors import UserError
from yoloslim.models.io import atomic_write, existing_file


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write training state (tensors, numbers, strings, nested dicts/lists) atomically."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read training state with ``weights_only=True``: nothing in the file can execute."""
    path = existing_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        raise UserError(f"{path}: not a readable training-state file ({e.__class__.__name__})") from None
