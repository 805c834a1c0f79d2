"""Where a model runs and on how many threads: the one resolver every command uses.

``--device`` accepts ``cpu``, ``cuda``, ``cuda:N``, ``N`` (the same as ``cuda:N``) and ``mps``; left
out, it is ``cuda`` when PyTorch sees a GPU, else ``cpu`` (:func:`default_device`, the only place
that default lives). An index-less ``cuda`` is the GPU of this process's local rank (0 outside
``torchrun``), because ``torch.cuda.set_device`` needs an index. Asking for a device that is not
there is one :class:`~yoloslim.errors.UserError` line, never a traceback from deep inside PyTorch.

``--threads`` sets PyTorch's intra-op threads (and ONNX Runtime's, where a command runs it). The
default, :func:`default_threads`, is ``OMP_NUM_THREADS`` when the user set it, else half the CPUs
this process may use, at least 1 and at most 4:

- ``os.cpu_count()`` counts logical CPUs; on most machines two of them share a physical core, and
  PyTorch's own default is one thread per physical core (this counts the CPUs the process may use);
- a thread that loses its core to another process stalls every parallel operation at its barrier:
  on a busy 2-core machine PyTorch's own default (one thread per core) made ``predict`` about 90
  times slower than one thread (issue 11), so leaving room for the data-loader workers and for
  other work is the safer default;
- the cap of 4 keeps several runs on a big shared machine from oversubscribing it. On a machine of
  your own, raise it with ``--threads``.
"""

from __future__ import annotations

import os
import re

import torch

from yoloslim.errors import UserError

DEVICE_HELP = "cpu, cuda, cuda:N, N (= cuda:N) or mps (default: cuda when available, else cpu)"
THREADS_HELP = ("intra-op threads of PyTorch (and ONNX Runtime) (default: OMP_NUM_THREADS, else half the "
                "CPUs, 1 to 4)")
HALF_HELP = "float16 inference on a CUDA device (refused on cpu and mps)"
MAX_DEFAULT_THREADS = 4


def default_device() -> str:
    """``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``: the default of every ``--device``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | int | None = None, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` that ``--device name`` means on this machine.

    Args:
        name: ``cpu``, ``cuda``, ``cuda:N``, ``N`` or ``mps``; None or "" for :func:`default_device`.
        local_rank: the GPU an index-less ``cuda`` becomes (``torchrun``'s ``LOCAL_RANK``).

    Raises:
        UserError: the name is not a device, or the device is not available here.
    """
    given = "" if name is None else str(name).strip()
    text = given.lower() or default_device()
    flag = f"--device {given or text}"
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"{flag}: Apple's Metal (MPS) is not available here; use --device cpu")
        return torch.device("mps")
    if re.fullmatch(r"(cuda:)?\d+(,\d+)+", text):
        raise UserError(f"{flag}: one device per process; to train on several GPUs run "
                        "`torchrun --nproc_per_node N -m yoloslim train ...` (each process takes its own GPU)")
    match = re.fullmatch(r"(?:cuda(?::(\d+))?|(\d+))", text)
    if not match:
        raise UserError(f"{flag}: not a device; use cpu, cuda, cuda:N, N or mps")
    index = match.group(1) or match.group(2)
    if not torch.cuda.is_available():
        raise UserError(f"{flag}: CUDA is not available here (no GPU, or a CPU-only PyTorch); use --device cpu")
    count = torch.cuda.device_count()
    index = local_rank if index is None else int(index)
    if index >= count:
        raise UserError(f"{flag}: there is no CUDA device {index} (this machine has {count}: "
                        f"{', '.join(str(i) for i in range(count))})")
    return torch.device("cuda", index)


def check_half(half: bool, device: torch.device) -> None:
    """Refuse ``--half`` off CUDA (float16 convolutions on a CPU are slow where they exist at all)."""
    if half and device.type != "cuda":
        raise UserError(f"--half runs float16 on a CUDA device only, and this run is on {device.type}; "
                        "leave out --half (or give --device cuda)")


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive number, else half the usable CPUs, clamped to 1..4."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_THREADS, cpus // 2))


def set_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads to ``threads`` (None: :func:`default_threads`); returns the number."""
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise UserError(f"--threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    return n
