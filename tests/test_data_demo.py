"""``yoloslim demo --quick``: data set generated, converted, checked; a second run reuses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yoloslim.cli import main
from yoloslim.workflows.demo import QUICK


def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    quick = ["demo", "--out", str(out), "--quick", "--epochs", "1", "--workers", "0"]
    assert main([*quick, "--json", str(tmp_path / "demo.json")]) == 0
    text = capsys.readouterr().out
    assert "[1/6]" in text and "[3/6]" in text and "no problems found" in text
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert Path(summary["data_yaml"]).is_file() and (out / "yoloslim.log").is_file()
    assert sum(summary["data"]["images"].values()) == QUICK.images and summary["data"]["problems"] == 0
    assert Path(summary["train"]["weights"]).is_file() and summary["predict"]["images"] == 4
    assert 0 <= summary["val"]["map50"] <= 1 and len(list((out / "predict").glob("*.jpg"))) == 4
    stamp = (out / "data" / "settings.json").read_text()
    assert main(quick) == 0
    assert "(reused)" in capsys.readouterr().out
    assert (out / "data" / "settings.json").read_text() == stamp


def test_demo_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 2
    assert (tmp_path / "data" / "mine.txt").is_file()
