"""The guides' commands run as written: every ```console block of README.md and docs/*.md.

Rules (also stated at the end of docs/cli.md):

* A ```console block holds ``yoloslim ...`` command lines, optionally prefixed ``$ ``. When any line
  of a block has the prefix, the lines without it are the output shown in the guide, and each of
  them that holds no ``...`` must appear in what the command before it printed. ``# ...`` comments
  and trailing `` \\`` continuations are allowed.
* A block right after ``<!-- no-test -->`` (or ``<!-- no-test: reason -->``) is not run: ``make``,
  a camera, the user's own files. ```text / ```bash / ```python blocks are never run.
* ``<!-- files: a b/c -->`` right after a block names files or folders the block must have made.
  Besides, every ``--out`` / ``--json`` / ``--save-json`` target of a command must exist after it.
* ``<!-- setup: video NAME -->`` right before a block makes a short video ``NAME`` from the ``.jpg``
  images the guide has made so far, standing in for the user's own clip.
* ``<!-- setup: ultralytics NAME -->`` right before a block writes ``NAME``, a YOLOv8n ``best.pt`` as
  the ``ultralytics`` package pickles it (classes of the guide's ``data/data.yaml``), standing in for
  the user's own checkpoint (see tests/test_import_ultralytics.py).
* ``<!-- setup: yolov5 NAME -->`` likewise writes ``NAME``, a YOLOv5n ``best.pt`` as the yolov5 repo
  pickles it (see tests/test_import_yolov5.py): a pretrained model to import.

Each file's blocks run in order in one fresh working folder (``tmp_path``), in this process, through
:func:`yoloslim.cli.main`, which must return 0 for every command.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_import_ultralytics import write_checkpoint
from test_import_yolov5 import write_checkpoint as write_yolov5_checkpoint
from yoloslim.cli import build_parser, main
from yoloslim.workflows.importer import read_names

ROOT = Path(__file__).resolve().parents[1]
# BENCHMARKS.md: full-size measurements (minutes to hours), reproduced by the lead, not by this test.
EXCLUDED = {"BENCHMARKS.md"}
OUTPUT_FLAGS = ("--out", "--json", "--save-json")
OWN_GUIDES = ("README.md", "getting-started.md", "prune-yolov5.md", "deploy.md", "checkpoints.md", "cli.md",
              "prune-yolov8.md")


@dataclass
class Command:
    """One command line of a guide and the output lines the guide shows for it."""

    text: str
    shown: list[str] = field(default_factory=list)


@dataclass
class Block:
    """One runnable ```console block."""

    file: str
    line: int  # 1-based line of the opening fence
    commands: list[Command]
    files: list[str] = field(default_factory=list)
    setup: list[tuple[str, str]] = field(default_factory=list)


def doc_files() -> list[Path]:
    docs = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in EXCLUDED)
    return [ROOT / "README.md", *docs]


def _comment(line: str, key: str) -> str | None:
    """The text after ``key`` in a ``<!-- key ... -->`` line, or None."""
    m = re.fullmatch(rf"<!--\s*{key}\b:?\s*(.*?)\s*-->", line.strip())
    return m.group(1) if m else None


def _neighbour(lines: list[str], i: int, step: int) -> str:
    """The nearest non-blank line before (step -1) or after (+1) index ``i``."""
    j = i + step
    while 0 <= j < len(lines) and not lines[j].strip():
        j += step
    return lines[j] if 0 <= j < len(lines) else ""


def parse_blocks(path: Path) -> list[Block]:
    """The runnable ```console blocks of a Markdown file, in order."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^\s*(```+)\s*([\w-]*)", lines[i])
        if not fence:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence.group(1)):
            end += 1
        lang, body = fence.group(2), lines[i + 1:end]
        before, after = _neighbour(lines, i, -1), _neighbour(lines, end, 1)
        if lang == "console" and _comment(before, "no-test") is None:
            setup = _comment(before, "setup")
            blocks.append(Block(
                file=path.name, line=i + 1, commands=block_commands(body, f"{path.name}:{i + 1}"),
                files=(_comment(after, "files") or "").split(),
                setup=[tuple(setup.split(maxsplit=1))] if setup else []))
        i = end + 1
    return blocks


def block_commands(body: list[str], where: str) -> list[Command]:
    """The commands of a block body (continuations joined, comments dropped) with their shown output."""
    joined, buf = [], ""
    for raw in body:
        line = raw.rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        joined.append(buf + line)
        buf = ""
    prompted = any(ln.lstrip().startswith("$ ") for ln in joined)
    commands: list[Command] = []
    for ln in joined:
        s = ln.strip()
        if prompted and not s.startswith("$ "):
            if s and "..." not in s and "…" not in s and commands:
                commands[-1].shown.append(s)
            continue
        s = s[2:].strip() if prompted else s
        if not s or s.startswith("#"):
            continue
        if not s.startswith("yoloslim "):
            raise AssertionError(f"{where}: a console block runs `yoloslim ...` lines only, not {s!r}; "
                                 "fence it as ```text or put <!-- no-test --> before it")
        commands.append(Command(s))
    return commands


def expected_outputs(argv: list[str]) -> list[str]:
    """Files and folders a command names as its outputs."""
    return [argv[k + 1] for k, a in enumerate(argv[:-1]) if a in OUTPUT_FLAGS]


def make_video(path: Path, root: Path, frames: int = 12) -> None:
    """A short mp4 made of the guide's own images: the stand-in for a user's clip."""
    import cv2

    images = sorted(root.rglob("*.jpg"))[:frames]
    assert images, f"{path}: no .jpg images made before this block to build the video from"
    h, w = cv2.imread(str(images[0])).shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    assert writer.isOpened(), "OpenCV cannot write mp4 here"
    for p in images:
        writer.write(cv2.resize(cv2.imread(str(p)), (w, h)))
    writer.release()


def _parse_all() -> tuple[dict[str, list[Block]], dict[str, str]]:
    """Blocks per file, and the parse error of each file that has one (reported by its own test)."""
    blocks, errors = {}, {}
    for p in doc_files():
        try:
            blocks[p.name] = parse_blocks(p)
        except AssertionError as e:
            blocks[p.name], errors[p.name] = [], str(e)
    return blocks, errors


ALL_BLOCKS, PARSE_ERRORS = _parse_all()
RUNNABLE = [name for name, blocks in ALL_BLOCKS.items()
            if any(b.commands for b in blocks) or name in PARSE_ERRORS]


def test_every_guide_has_commands_the_tests_run():
    for name in OWN_GUIDES:
        assert name in RUNNABLE, f"{name} has no ```console block of yoloslim commands"


def test_parser_rules(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("\n".join([
        "```console", "$ yoloslim info --model yolov5n   # a comment", "yolov5n (yolov5, 80 classes)",
        "a line with ... is not checked", "```", "<!-- files: a.json -->", "",
        "<!-- no-test: camera -->", "```console", "yoloslim predict --source 0", "```",
        "```text", "yoloslim never run", "```",
        "<!-- setup: video clip.mp4 -->", "```console",
        "yoloslim predict --weights m.safetensors \\", "  --source clip.mp4", "```",
    ]))
    blocks = parse_blocks(doc)
    assert [[c.text for c in b.commands] for b in blocks] == [
        ["yoloslim info --model yolov5n   # a comment"],
        ["yoloslim predict --weights m.safetensors    --source clip.mp4"],
    ]
    assert blocks[0].commands[0].shown == ["yolov5n (yolov5, 80 classes)"]
    assert blocks[0].files == ["a.json"] and blocks[1].setup == [("video", "clip.mp4")]
    assert expected_outputs(["val", "--out", "a", "--json", "b.json"]) == ["a", "b.json"]
    doc.write_text("```console\n$ python train.py\n```\n")
    with pytest.raises(AssertionError, match="yoloslim"):
        parse_blocks(doc)


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "yoloslim",
                ) -> dict[str, argparse.ArgumentParser]:
    """``"yoloslim data synth"`` -> its parser, for every leaf subcommand."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_subparsers(sub, f"{prefix} {name}"))
    return out or {prefix: parser}


def test_cli_reference_lists_every_flag_and_no_other():
    text = (ROOT / "docs" / "cli.md").read_text()
    sections = dict(re.findall(r"^## (yoloslim [\w ]+?)\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    for command, parser in _subparsers(build_parser()).items():
        assert command in sections, f"docs/cli.md has no section '## {command}'"
        rows = re.findall(r"^\| `([^`]+)`", sections[command], re.M)
        documented = {f for row in rows for f in re.findall(r"--[\w-]+", row)}
        real = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        assert real - documented == set(), f"{command}: flags missing from docs/cli.md"
        assert documented - real == set(), f"{command}: docs/cli.md names flags that do not exist"


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNNABLE)
def test_guide_commands_run(name, tmp_path, monkeypatch, capsys):
    assert name not in PARSE_ERRORS, PARSE_ERRORS.get(name)
    monkeypatch.chdir(tmp_path)
    for block in ALL_BLOCKS[name]:
        where = f"{name}:{block.line}"
        for kind, target in block.setup:
            assert kind in ("video", "ultralytics", "yolov5"), f"{where}: unknown setup {kind!r}"
            if kind == "video":
                make_video(tmp_path / target, tmp_path)
            else:
                write = write_checkpoint if kind == "ultralytics" else write_yolov5_checkpoint
                write(tmp_path / target, names=read_names(tmp_path / "data" / "data.yaml"))
        for cmd in block.commands:
            argv = shlex.split(cmd.text, comments=True)[1:]
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse: unknown flag, --version
                rc = e.code or 0
            out, err = capsys.readouterr()
            assert rc == 0, f"{where}: `{cmd.text}` exited {rc}\n{err[-2000:]}"
            for line in cmd.shown:
                assert line in out, f"{where}: `{cmd.text}` did not print the line the guide shows: {line!r}"
            for target in expected_outputs(argv):
                assert (tmp_path / target).exists(), f"{where}: `{cmd.text}` did not write {target}"
        for f in block.files:
            assert (tmp_path / f).exists(), f"{where}: the guide says {f} exists by now"
