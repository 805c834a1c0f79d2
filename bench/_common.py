"""Helpers shared by the benchmark scripts: the command line, the environment, timers, Markdown tables."""

from __future__ import annotations

import os
import platform
import resource
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def command_line(script: str | Path, argv: list[str] | None = None) -> str:
    """The command that reproduces this run, as typed from the repository root.

    Args:
        script: the benchmark's ``__file__``.
        argv: its arguments (default ``sys.argv[1:]``).
    """
    argv = sys.argv[1:] if argv is None else argv
    path = Path(script).resolve()
    return shlex.join(["python", str(path.relative_to(path.parents[1])), *argv])


def environment() -> dict[str, Any]:
    """Versions and machine facts that figures depend on."""
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                           "cpu": _cpu_name(), "platform": platform.platform()}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    try:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Stopwatch:
    """Wall and CPU seconds since it was started (``with Stopwatch() as sw: ...; sw.wall``)."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._t, self._c = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t
        self.cpu = cpu_seconds() - self._c

    def to_dict(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 1), "cpu_s": round(self.cpu, 1)}


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table; columns whose cells are all numbers (or blank) are right-aligned."""
    cells = [["" if c is None else str(c) for c in r] for r in rows]
    numeric = [all(_numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)


def _numeric(s: str) -> bool:
    t = s.strip().rstrip("%×xM ").replace(",", "").replace("−", "-").lstrip("+-")
    return t in ("", "-", "—") or t.replace(".", "", 1).isdigit()
