"""Logging: loguru to the console and, per run, to a rotating file in the run's folder."""

from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

_file_sink: int | None = None


def setup_logging(run_dir: Path | None = None, verbose: bool = False) -> None:
    """Log to stderr, and to ``run_dir/yoloslim.log`` (rotated at 1 MB) when a run folder is given."""
    global _file_sink
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "INFO", format="<level>{message}</level>")
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        _file_sink = logger.add(Path(run_dir) / "yoloslim.log", level="DEBUG", rotation="1 MB",
                                format="{time:YYYY-MM-DD HH:mm:ss} | {level} | {message}")


__all__ = ["logger", "setup_logging"]
