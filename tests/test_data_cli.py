"""``yoloslim data ...`` through ``yoloslim.cli.main``: return codes, files and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yoloslim.cli import main


def test_data_help_lists_subcommands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["data", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("synth", "convert", "check"))
    assert main(["data"]) == 2


def test_synth_convert_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    voc = tmp_path / "voc"
    assert main(["data", "synth", "--out", str(voc), "--format", "voc", "--images", "8", "--imgsz", "64",
                 "--seed", "3"]) == 0
    assert len(list((voc / "Annotations").glob("*.xml"))) == 8
    out = tmp_path / "yolo"
    assert main(["data", "convert", "--voc", str(voc), "--out", str(out), "--val-ratio", "0.25",
                 "--seed", "1", "--json", str(tmp_path / "convert.json")]) == 0
    summary = json.loads((tmp_path / "convert.json").read_text())
    assert summary["images"] == {"train": 6, "val": 2} and Path(summary["data_yaml"]).is_file()
    capsys.readouterr()
    check_json = tmp_path / "check.json"
    assert main(["data", "check", "--data", str(out / "data.yaml"), "--json", str(check_json)]) == 0
    text = capsys.readouterr().out
    assert "no problems found" in text and "box size" in text and "letter_A" in text
    check = json.loads(check_json.read_text())
    assert check["ok"] and check["images"] == {"train": 6, "val": 2}
    assert sum(check["size_hist"]["train"]) == sum(check["boxes"]["train"].values()) > 0
    assert main(["data", "synth", "--out", str(tmp_path / "y"), "--images", "3", "--imgsz", "64"]) == 0
    assert (tmp_path / "y" / "data.yaml").is_file()
    assert main(["data", "synth", "--out", str(tmp_path / "z"), "--images", "1"]) == 2
