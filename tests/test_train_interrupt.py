"""Ctrl-C during training: exit 130 with the exact command that resumes the run, and that command works."""

import shlex

import yoloslim.engine.train as engine_train
from yoloslim.cli import main
from yoloslim.engine.train_state import load_state


def _interrupt_in_epoch(monkeypatch, n):
    original = engine_train.train_one_epoch

    def interrupted(parts, loader, epoch, *args, **kw):
        if epoch == n:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main process
        return original(parts, loader, epoch, *args, **kw)

    monkeypatch.setattr(engine_train, "train_one_epoch", interrupted)
    return original


def _argv(data, out):
    return ["train", "--data", str(data), "--model", "yolov5n", "--epochs", "2", "--batch", "8", "--imgsz", "64",
            "--workers", "0", "--device", "cpu", "--out", str(out)]


def test_ctrl_c_prints_the_resume_command_and_it_resumes(tiny_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "my run"  # a space: the printed command must still be one argument
    original = _interrupt_in_epoch(monkeypatch, 1)
    assert main(_argv(tiny_data, run)) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    command = f"yoloslim train --resume {shlex.quote(str(run))}"
    assert err == f"interrupted; the last saved epoch is kept: resume with `{command}`"
    assert load_state(run / "weights" / "last_state.pt")["epoch"] == 1

    monkeypatch.setattr(engine_train, "train_one_epoch", original)
    assert main(shlex.split(command)[1:] + ["--workers", "0"]) == 0
    assert load_state(run / "weights" / "last_state.pt")["epoch"] == 2


def test_ctrl_c_in_the_first_epoch_says_there_is_nothing_to_resume(tiny_data, tmp_path, monkeypatch, capsys):
    _interrupt_in_epoch(monkeypatch, 0)
    assert main(_argv(tiny_data, tmp_path / "run")) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"interrupted before the first checkpoint of {tmp_path / 'run'} was written; nothing to resume, "
                   "start the run again")
