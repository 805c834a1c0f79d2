"""Reading foreign ``torch.save`` files without running anything they contain.

A ``torch.save`` file (torch >= 1.6) is a zip archive: ``<prefix>/data.pkl`` is a pickle whose
tensors point, through persistent ids ``("storage", <dtype storage class>, key, location, numel)``,
at raw little-endian buffers stored as ``<prefix>/data/<key>``. A pickle may name any importable
callable, and unpickling calls it: that is how a checkpoint "runs code". :func:`load_torch_file`
reads the archive with :class:`RestrictedUnpickler`, whose ``find_class`` hands out only

* yoloslim's own tensor rebuild functions in place of torch's (``torch._utils._rebuild_tensor_v2``
  ...), storage-type markers and ``torch`` dtypes;
* plain containers and values (``collections.OrderedDict``, ``set``, ``frozenset``, ``complex``,
  ``bytes`` through ``_codecs.encode`` of a string);
* INERT stand-ins for classes of a known set of modules (the YOLOv5 repo's ``models.*``, the
  ``ultralytics`` package's ``ultralytics.*``, ``torch.nn.modules.*``, numpy arrays, ``pathlib``
  paths): empty objects that only keep the state the pickle gives them (``__setstate__``), never the
  real class;

and refuses every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) with a
:class:`UnsafePickleError` before anything is called. Nothing from the file is imported.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from yoloslim.errors import UserError

# Pickled storage-class names (``torch.HalfStorage`` ...) and the element type they hold.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}

DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name) for name in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
        "double", "float", "half", "long", "int", "short")
}

# Modules whose CamelCase classes become inert stand-ins (module name, or prefix ending in ".").
STAND_IN_MODULES = (
    "models.yolo", "models.common", "models.experimental", "models.pruned_common", "ultralytics.",
    "torch.nn.modules.", "numpy", "numpy.core.multiarray", "numpy._core.multiarray", "pathlib", "argparse",
)
# Lower-case names that rebuild numpy arrays and scalars: harmless when replaced by stand-ins.
STAND_IN_NAMES = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}
MAX_INFLATION = 64  # torch.save stores members uncompressed; more than this ratio is a zip bomb
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*\Z")
# Globals that honest checkpoints sometimes hold, with what to do about them.
_HINTS = {
    "builtins.getattr": " (a fused model stores bound methods; import the unfused checkpoint from training)",
}


class UnsafePickleError(UserError):
    """The file names a global that yoloslim will not call."""


class StandIn:
    """An inert object standing in for a class of the pickled file.

    Creating one does nothing; the pickle's state lands in ``__dict__`` and stays there as data.
    Subclasses are made per pickled class; ``pickled_name`` holds its ``module.Name``.
    """

    pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots)
        if isinstance(state, dict):
            self.__dict__.update({k: v for k, v in state.items() if isinstance(k, str)})
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<stand-in {self.pickled_name}>"


class _StorageType:
    """What the pickle's ``torch.HalfStorage`` (etc.) becomes: just the element type."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage read from the archive: a flat tensor of its element type."""

    def __init__(self, flat: torch.Tensor) -> None:
        self.flat = flat  # (numel,)


def _as_tensor(storage: Any, offset: int, size: Any, stride: Any,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise UserError("damaged checkpoint: a tensor does not point at a stored buffer")
    flat = storage.flat if dtype is None else storage.flat.view(dtype)
    try:
        return flat.as_strided(tuple(size), tuple(stride), int(offset))
    except RuntimeError as e:
        raise UserError(f"damaged checkpoint: a tensor does not fit its buffer ({e})") from None


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):  # noqa: ANN001
    return _as_tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):  # noqa: ANN001
    return _as_tensor(storage, offset, size, stride, dtype)


def _rebuild_tensor(storage, offset, size, stride):  # noqa: ANN001
    return _as_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad, hooks, state=None):  # noqa: ANN001
    return data  # a Parameter is only its tensor here


def _rebuild_from_type_v2(func, new_type, args, state):  # noqa: ANN001
    if func not in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_tensor, _rebuild_parameter):
        raise UnsafePickleError("refusing a tensor rebuilt by an unknown function")
    return func(*args)


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """How protocol-2 pickles store ``bytes`` (``_codecs.encode(str, "latin1")``), for strings only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise UnsafePickleError("refusing _codecs.encode on anything but a string")
    return text.encode(encoding)


_TORCH_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("builtins", "complex"): complex, ("__builtin__", "complex"): complex,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that calls nothing but the tensor rebuilders and containers listed above.

    Args:
        file: the pickle stream.
        read_storage: ``(key, dtype, numel) -> flat tensor``, reading ``data/<key>`` of the archive.
        source: the file name, for messages.
    """

    def __init__(self, file: io.BufferedIOBase, read_storage: Any, source: str) -> None:
        super().__init__(file)
        self._read_storage = read_storage
        self._source = source
        self._stand_ins: dict[str, type[StandIn]] = {}
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[key]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in DTYPES:
            return DTYPES[name]
        if key in STAND_IN_NAMES or (_CLASS_NAME.match(name) and _stand_in_module(module)):
            return self._stand_in(module, name)
        module = {"__builtin__": "builtins", "posix": "os", "nt": "os"}.get(module, module)  # as users say
        hint = next((h for prefix, h in _HINTS.items() if f"{module}.{name}".startswith(prefix)), "")
        raise UnsafePickleError(
            f"{self._source}: refusing to load: the pickle calls {module}.{name}, which is not a tensor, a "
            f"container or a known model class; it could run code, so nothing in the file was executed{hint}"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")
                and isinstance(pid[1], _StorageType)):
            raise UserError(f"{self._source}: damaged checkpoint (unknown persistent id {str(pid)[:60]})")
        _, storage_type, key, _location, numel = pid
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(self._read_storage(key, storage_type.dtype, int(numel)))
        return self._storages[key]

    def _stand_in(self, module: str, name: str) -> type[StandIn]:
        full = f"{module}.{name}"
        if full not in self._stand_ins:
            self._stand_ins[full] = type(name, (StandIn,), {"pickled_name": full})
        return self._stand_ins[full]


def _stand_in_module(module: str) -> bool:
    return any(module == m or (m.endswith(".") and module.startswith(m)) for m in STAND_IN_MODULES)


def load_torch_file(path: str | Path) -> Any:
    """Unpickle a ``torch.save`` zip file with :class:`RestrictedUnpickler`; tensors come back on the CPU.

    Raises:
        UserError: not a zip-format torch file, a damaged one, or (as :class:`UnsafePickleError`) one
            whose pickle names a global outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a zip-format torch checkpoint (files written by torch >= 1.6); "
                        "re-save it with a recent torch, or check the path")
    try:
        with zipfile.ZipFile(path) as zf:
            return _load_archive(zf, path)
    except UserError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
        raise UserError(f"{path}: damaged checkpoint archive ({first})") from None


def _check_memo(raw: bytes, path: Path) -> None:
    """Refuse memo indices beyond the pickle's own length: the C unpickler grows its memo table to the
    largest index it is given, so ``LONG_BINPUT 2**31`` alone would allocate gigabytes. Read with
    :mod:`pickletools`, which runs nothing."""
    try:
        with warnings.catch_warnings():  # odd escapes in a damaged STRING opcode warn; the pickle is refused
            warnings.simplefilter("ignore")
            ops = list(pickletools.genops(raw))
    except (ValueError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: damaged checkpoint pickle ({str(e).splitlines()[0][:120]})") from None
    for op, arg, _ in ops:
        if op.name in _MEMO_OPS and arg is not None and not 0 <= int(arg) <= len(ops):
            raise UserError(f"{path}: damaged checkpoint pickle (memo index {arg} in a pickle of {len(ops)} "
                            "operations; refused)")


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """One member of the archive, refused when it would inflate far beyond its stored size (a zip bomb)."""
    info = zf.getinfo(name)
    if info.file_size > MAX_INFLATION * info.compress_size + (1 << 20):
        raise UserError(f"{path}: damaged checkpoint ({name} claims {info.file_size:,} bytes from "
                        f"{info.compress_size:,}; refused)")
    return zf.read(name)


def _load_archive(zf: zipfile.ZipFile, path: Path) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pkl) != 1:
        hint = " (a TorchScript file?)" if any(n.endswith("constants.pkl") for n in names) else ""
        raise UserError(f"{path}: not a torch.save checkpoint{hint}")
    prefix = pkl[0][: -len("data.pkl")]
    order = _read_member(zf, prefix + "byteorder", path).decode() if prefix + "byteorder" in names else "little"

    def read_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        record = f"{prefix}data/{key}"
        if record not in names:
            raise UserError(f"{path}: damaged checkpoint (no buffer {record})")
        raw = bytearray(_read_member(zf, record, path))
        size = torch.empty((), dtype=dtype).element_size()
        if len(raw) < numel * size:
            raise UserError(f"{path}: damaged checkpoint (buffer {record} is short)")
        if not numel:
            return torch.empty(0, dtype=dtype)
        flat = torch.frombuffer(raw, dtype=torch.uint8, count=numel * size)
        if order != sys.byteorder and size > 1:
            flat = flat.view(-1, size).flip(1).reshape(-1)  # to this machine's byte order
        return flat.view(dtype)

    raw = _read_member(zf, pkl[0], path)
    _check_memo(raw, path)
    unpickler = RestrictedUnpickler(io.BytesIO(raw), read_storage, str(path))
    try:
        return unpickler.load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise UserError(f"{path}: damaged checkpoint pickle ({e.__class__.__name__}: {first})") from None


# ---------------------------------------------------------------- reading a tree of stand-ins (a pickled nn.Module)

def children(m: Any) -> dict[str, Any]:
    """The ``_modules`` of a stand-in (a pickled ``nn.Module``), or ``{}``."""
    mods = m.__dict__.get("_modules") if isinstance(m, StandIn) else None
    return dict(mods) if isinstance(mods, dict) else {}


def walk(m: StandIn, prefix: str = "") -> Iterator[tuple[str, StandIn]]:
    """``(dotted name + ".", stand-in)`` for ``m`` and every stand-in below it, parents first."""
    yield prefix, m
    for name, child in children(m).items():
        if isinstance(child, StandIn):
            yield from walk(child, f"{prefix}{name}.")


def state_of(tree: StandIn) -> dict[str, torch.Tensor]:
    """``_parameters`` and persistent ``_buffers`` of every stand-in, under their module paths: the state
    dict the pickled module would give."""
    state: dict[str, torch.Tensor] = {}
    for prefix, m in walk(tree, ""):
        d = m.__dict__
        skip = d.get("_non_persistent_buffers_set") or set()
        for group in ("_parameters", "_buffers"):
            for k, v in (d.get(group) or {}).items():
                if isinstance(v, torch.Tensor) and k not in skip:
                    state[prefix + k] = v
    return state


def submodule(tree: StandIn, name: str) -> StandIn | None:
    """The stand-in at dotted path ``name`` below ``tree``, or None."""
    m: Any = tree
    for part in name.split("."):
        m = children(m).get(part)
        if m is None:
            return None
    return m if isinstance(m, StandIn) else None
