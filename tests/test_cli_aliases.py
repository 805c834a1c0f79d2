"""The YOLOv5 scripts' flag names: accepted as aliases, or answered with the name to use."""

import argparse

import pytest

from yoloslim.cli import build_parser, main
from yoloslim.cli.options import ALIASES, RENAMED, RUN_FOLDER_COMMANDS


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name, p in a.choices.items()}


@pytest.mark.parametrize("argv, expected", [
    (["train", "--batch-size", "8", "--img-size", "96"], {"batch": 8, "imgsz": 96}),
    (["train", "--img", "128"], {"imgsz": 128}),
    (["val", "--weights", "w", "--data", "d", "--conf-thres", "0.1", "--iou-thres", "0.5", "--batch-size", "4"],
     {"conf": 0.1, "iou": 0.5, "batch": 4}),
    (["predict", "--source", "s", "--conf-thres", "0.4", "--img-size", "320"], {"conf": 0.4, "imgsz": 320}),
    (["prune", "--weights", "w", "--method", "l1", "--ratio", "0.5", "--img", "320"], {"imgsz": 320}),
])
def test_yolov5_names_are_aliases(argv, expected):
    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


def test_every_command_with_a_flag_takes_its_aliases():
    for name, parser in _commands().items():
        flags = {o for a in parser._actions for o in a.option_strings}
        for flag, aliases in ALIASES.items():
            if flag in flags:
                for alias in aliases:
                    action = parser._option_string_actions[alias]
                    assert action is parser._option_string_actions[flag], (name, alias)


@pytest.mark.parametrize("command", RUN_FOLDER_COMMANDS)
@pytest.mark.parametrize("flag", sorted(RENAMED))
def test_project_and_name_are_answered_with_out(command, flag, capsys):
    argv = [command, flag, "x"] + (["--source", "s"] if command == "predict" else [])
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: not a yoloslim flag; yoloslim takes the whole folder as --out PROJECT/NAME" in err
