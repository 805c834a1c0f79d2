"""Flags several subcommands share, defined once: ``--device``, ``--half``, ``--threads``, and the
YOLOv5 scripts' spellings of our flags.

Aliases (``ALIASES``) are pure renames: ``--batch-size 8`` is ``--batch 8``. ``--project`` and
``--name`` are not a rename (YOLOv5 joins them into one run folder), so they are answered with the
flag to use instead (``RENAMED``), on the commands whose YOLOv5 script has them and whose ``--out``
is a run folder (``RUN_FOLDER_COMMANDS``).
"""

from __future__ import annotations

import argparse

from yoloslim.device import DEVICE_HELP, HALF_HELP, THREADS_HELP

# our flag -> the YOLOv5 scripts' names accepted for it (wherever the flag exists)
ALIASES: dict[str, tuple[str, ...]] = {
    "--batch": ("--batch-size",),
    "--imgsz": ("--img-size", "--img"),
    "--conf": ("--conf-thres",),
    "--iou": ("--iou-thres",),
}
# the YOLOv5 scripts' flags that have no one-to-one counterpart -> what to type instead
RENAMED: dict[str, str] = {
    "--project": "yoloslim takes the whole folder as --out PROJECT/NAME",
    "--name": "yoloslim takes the whole folder as --out PROJECT/NAME",
}
RUN_FOLDER_COMMANDS = ("train", "predict")


def add_device(p: argparse.ArgumentParser, half: bool = False) -> None:
    """``--device`` (see :mod:`yoloslim.device`), and ``--half`` when the command can run float16."""
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    if half:
        p.add_argument("--half", action="store_true", help=HALF_HELP)


def add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads N``; :func:`yoloslim.cli.main` applies it before the command runs."""
    p.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)


class _Renamed(argparse.Action):
    """A YOLOv5 flag we do not take: the parse fails with the flag to use instead."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        raise argparse.ArgumentError(self, f"not a yoloslim flag; {RENAMED[option_string]}")


def add_aliases(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand of ``parser`` (recursively) the YOLOv5 spellings of the flags it has."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_aliases(sub)
    own = parser._option_string_actions
    for flag, aliases in ALIASES.items():
        if flag in own:
            for alias in aliases:
                own[alias] = own[flag]
                own[flag].option_strings.append(alias)
    if parser.prog.rsplit(" ", 1)[-1] in RUN_FOLDER_COMMANDS:
        for flag in RENAMED:
            parser.add_argument(flag, action=_Renamed, help=argparse.SUPPRESS)
