"""Model files, as plain data.

A model file is a ``.safetensors`` file: the weights, plus header metadata holding the spec
(JSON), class names, image size and the history of what was done to the model. Nothing is
pickled and nothing executes at load. Loading is strict: a shape mismatch is an error.

Every write goes to a temporary file that is renamed over the target, so a crash never leaves
half a file. (Training state for ``--resume`` lives in :mod:`yoloslim.engine.train_state`.)
"""

from __future__ import annotations

import json
import os
import pickletools
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models import build_model, check_model_size
from yoloslim.models.spec import ArchSpec

FORMAT = "yoloslim/1"


@dataclass
class ModelInfo:
    """What a model file says about its model besides the weights."""

    spec: ArchSpec
    names: list[str]
    imgsz: int = 640
    history: list[dict[str, Any]] = field(default_factory=list)

    def with_event(self, action: str, **details: Any) -> ModelInfo:
        """A copy with one more history entry (``trained``, ``sparse-trained``, ``pruned`` ...)."""
        event = {"action": action, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}
        return ModelInfo(self.spec.copy(), list(self.names), self.imgsz, [*self.history, event])


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``.

    The file gets the mode a plain ``open()`` would give it (``0o666`` less the umask), not
    ``mkstemp``'s private 0600. An OS error names ``path``, never the temporary file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        _slow_write_for_tests()
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise UserError(f"{path}: cannot write ({e.strerror or e.__class__.__name__})") from None
    except UserError as e:  # e.g. a check of the written file: name the file the user asked for
        _remove_quietly(tmp)
        if tmp and tmp in str(e):
            raise UserError(str(e).replace(tmp, str(path))) from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


def check_writable(path: str | Path | None, what: str, folder: bool = False) -> Path | None:
    """Refuse, before any work starts, an output place that cannot be written.

    Args:
        path: the file (or, with ``folder``, the folder) a command will write; None: nothing to check.
        what: the flag that named it (``"--out"``, ``"--json"`` ...), for the message.
        folder: ``path`` is a folder to create or fill rather than a file.

    Returns:
        ``path`` as a Path (None for None).

    Raises:
        UserError: one line naming the flag, the place and what is wrong with it.
    """
    if path is None or str(path) == "":
        return None
    path = Path(path)
    if path.is_dir() and not folder:
        raise UserError(f"{what} {path}: is a folder; give a file name")
    if path.exists() and not path.is_dir() and folder:
        raise UserError(f"{what} {path}: is a file; give a folder")
    place = path if folder and path.is_dir() else path.parent
    while not place.exists():  # the first part of the path that exists must be a folder we may write in
        place = place.parent
    if not place.is_dir():
        raise UserError(f"{what} {path}: {place} is a file, not a folder")
    try:  # the honest test: can a file be created there (read-only mounts, /sys, /proc ...)?
        with tempfile.TemporaryFile(dir=place):
            pass
    except OSError as e:
        raise UserError(f"{what} {path}: cannot write in {place} ({e.strerror or e.__class__.__name__})") from None
    if path.exists() and not folder and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path}: the file exists and is read-only")
    return path


def current_umask() -> int:
    """The process's umask, read without changing it where ``/proc`` allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _slow_write_for_tests() -> None:
    """``YOLOSLIM_TEST_SLOW_WRITES=SECONDS`` holds every finished temporary file that long before the
    rename: the kill-and-resume test uses it to kill runs in the middle of checkpoint writes."""
    delay = os.environ.get("YOLOSLIM_TEST_SLOW_WRITES")
    if delay:
        time.sleep(float(delay))


def _remove_quietly(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        try:
            os.remove(tmp)
        except OSError:
            pass


def save_model(path: str | Path, model: nn.Module, info: ModelInfo) -> Path:
    """Write weights and metadata to ``path`` (``.safetensors``) atomically."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
               for k, v in unwrap(model).state_dict().items()}
    meta = {
        "format": FORMAT,
        "spec": info.spec.to_json(),
        "names": json.dumps(list(info.names)),
        "imgsz": str(int(info.imgsz)),
        "history": json.dumps(info.history),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def read_info(path: str | Path) -> ModelInfo:
    """Read only the metadata of a model file."""
    path = existing_file(path)
    from safetensors import safe_open

    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"  # a zip: torch.save's format
    if zipped:
        raise UserError(f"{path}: {_torch_file_advice(path)}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .safetensors model file ({e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a yoloslim model file (no '{FORMAT}' header); "
                        "import foreign checkpoints with `yoloslim import`")
    try:
        spec = ArchSpec.from_json(meta["spec"])
        info = ModelInfo(spec, json.loads(meta["names"]), int(meta["imgsz"]), json.loads(meta.get("history", "[]")))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise UserError(f"{path}: damaged yoloslim header ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(info.names, list) or not isinstance(info.history, list) or not 0 < info.imgsz <= 16384:
        raise UserError(f"{path}: damaged yoloslim header (names, history or imgsz)")
    return info


def _torch_file_advice(path: Path) -> str:
    """What a ``torch.save`` file given as a model file is, and what to do with it, told apart by the
    names its pickle holds (read with :mod:`pickletools`: nothing in it runs)."""
    words: set[str] = set()
    modules: set[str] = set()  # of the globals the pickle names
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            if pkl is not None and z.getinfo(pkl).file_size <= 64 << 20:
                for op, arg, _ in pickletools.genops(z.read(pkl)):
                    if isinstance(arg, str) and len(arg) < 200:
                        words.add(arg.split(" ", 1)[0] if op.name == "GLOBAL" else arg)
                        if op.name == "GLOBAL":
                            modules.add(arg.split(" ", 1)[0])
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError):
        pass
    out = path.with_suffix(".safetensors").name
    if any(w.startswith("models.") for w in words):
        return (f"a YOLOv5 repo checkpoint, not a yoloslim model file; convert it first: "
                f"`yoloslim import --from yolov5 {path} --out {out}`")
    if any(w.startswith("ultralytics") for w in words):
        return (f"a checkpoint of the `ultralytics` package (YOLOv8 / YOLO11), not a yoloslim model file; "
                f"convert it first: `yoloslim import --from ultralytics {path} --out {out}`")
    if "start_epoch" in words:  # the YOLOX trainer's key
        return (f"a YOLOX checkpoint, not a yoloslim model file; convert it first: "
                f"`yoloslim import --from yolox {path} --out {out}`")
    ours = all(m.split(".")[0] in ("torch", "collections", "_codecs") for m in modules)
    if ours and ("epoch" in words or "config" in words):
        return ("this is a yoloslim training state (torch.save), not a model file; continue its run with "
                "`yoloslim train --resume`, or use its weights/*.safetensors")
    return ("a torch.save checkpoint of another project, not a yoloslim model file; convert it with "
            "`yoloslim import --from yolov5|ultralytics|yolox|darknet SRC --out MODEL.safetensors`")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelInfo]:
    """Rebuild the model a file describes and load its weights strictly."""
    path = existing_file(path)
    info = read_info(path)
    check_model_size(info.spec, str(path))
    model = build_model(info.spec)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: cannot read weights ({e})") from None
    load_state_strict(model, state, source=str(path))
    return model.to(device), info


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if shape:
            parts.append(f"shape mismatch {shape[:3]}")
        raise UserError(f"{source}: weights do not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def existing_file(path: str | Path) -> Path:
    """``path`` as a Path; a missing file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path
