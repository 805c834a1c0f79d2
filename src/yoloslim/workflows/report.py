"""Small helpers for the tables and JSON files that workflows print and write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yoloslim.models.io import atomic_write


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False))]
    for r in cells:
        lines.append("  ".join(c.rjust(w) if _is_num(c) else c.ljust(w) for c, w in zip(r, widths, strict=False)))
    return "\n".join(lines)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"))


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1e4 else f"{c:,.0f}"
    if isinstance(c, int) and not isinstance(c, bool):
        return f"{c:,}"
    return str(c)


def _is_num(s: str) -> bool:
    return s.replace(",", "").replace(".", "").replace("-", "").replace("e", "").isdigit()
