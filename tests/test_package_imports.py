"""Package layering: pruning, losses, deployment and models need nothing from the training package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import yoloslim

PACKAGE = Path(yoloslim.__file__).parent


def imported_modules(text: str, package: str) -> set[str]:
    """Every module an ``import`` / ``from ... import`` statement in ``text`` names (at any depth,
    function-local ones included), resolved to absolute dotted names; ``package`` is the dotted
    package the file sits in (for relative imports)."""
    tree = ast.parse(text)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


@pytest.mark.parametrize("package", ["prune", "loss", "deploy", "models"])
def test_no_engine_imports(package: str) -> None:
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files
    offenders = {}
    for f in files:
        where = ".".join(("yoloslim", *f.relative_to(PACKAGE).parts[:-1]))
        offenders[str(f.relative_to(PACKAGE))] = sorted(
            m for m in imported_modules(f.read_text(), where)
            if m == "yoloslim.engine" or m.startswith("yoloslim.engine."))
    assert {f: m for f, m in offenders.items() if m} == {}


def test_walker_sees_engine_imports() -> None:
    """The walker itself: a plain, a function-local and a relative import of the engine are all seen."""
    text = ("import yoloslim.engine.train\n"
            "def f():\n    from yoloslim.engine.ddp import x\n"
            "from ..engine import evaluate\n")
    found = imported_modules(text, "yoloslim.prune")
    assert {"yoloslim.engine.train", "yoloslim.engine.ddp", "yoloslim.engine.evaluate"} <= found


def test_prune_command_does_not_load_onnx() -> None:
    """onnx takes about a second to import: `yoloslim prune` loads it only when it times ONNX Runtime."""
    code = ("import sys, yoloslim.cli, yoloslim.cli.prune, yoloslim.workflows.prune, yoloslim.prune.latency_target\n"
            "print('onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
