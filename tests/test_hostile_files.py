"""Hostile and broken files: seeded random mutations of every reader's input, and the classic attacks.

Every reader must either read the file or refuse it with a :class:`UserError` (data readers may also
record a per-file problem and skip the sample, as they do for any bad file); no other exception, no
code from the file executed, and time and memory bounded: each attack runs under an address-space
limit and an alarm, so a reader that tried to allocate terabytes or loop for ever fails the test
instead of the machine.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import resource
import signal
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest
import torch
import yaml
from safetensors.torch import save_file

from test_darknet_io import TINY_CFG
from test_import_ultralytics import write_checkpoint as write_ultralytics_checkpoint
from test_import_yolov5 import _save_like_ultralytics, _ultralytics_model, ultralytics_modules  # noqa: F401
from yoloslim.cli import main
from yoloslim.data.dataset import load_data
from yoloslim.data.images import MAX_IMAGE_PIXELS, image_size, read_image, verify_image
from yoloslim.data.synth import synthesize
from yoloslim.data.voc import parse_xml
from yoloslim.data.yolo import parse_label_file
from yoloslim.deploy.darknet_io import load_darknet, write_darknet
from yoloslim.deploy.import_ultralytics import import_ultralytics
from yoloslim.deploy.import_yolov5 import import_yolov5
from yoloslim.deploy.import_yolox import load_yolox_checkpoint
from yoloslim.deploy.safe_unpickle import UnsafePickleError, load_torch_file
from yoloslim.errors import UserError
from yoloslim.models import build_model, check_model_size, create_model
from yoloslim.models.darknet_cfg import parse_cfg
from yoloslim.models.io import FORMAT, ModelInfo, load_model, save_model
from yoloslim.models.spec import ArchSpec
from yoloslim.models.yolov3 import spec_from_cfg
from yoloslim.safe_parse import load_yaml_file

MUTATIONS = 25  # per reader; a fixed seed each, so a failure reproduces
EXTRA_MEMORY = 1 << 30  # what one reader may add to the address space while reading a hostile file
SECONDS = 60  # a generous alarm per file: a loop for ever, not a slow machine, is what it catches


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """Address space limited to its current size plus :data:`EXTRA_MEMORY`; an alarm after :data:`SECONDS`."""
    vm = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
              if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + EXTRA_MEMORY if hard == resource.RLIM_INFINITY else min(hard, vm + EXTRA_MEMORY)

    def alarm(*_: object) -> None:
        raise TimeoutError(f"a reader ran longer than {SECONDS} s")

    old = signal.signal(signal.SIGALRM, alarm)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.alarm(SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: flip bytes, truncate, insert junk, duplicate a slice, delete a slice, overwrite with 0xff."""
    b = bytearray(data)
    kind = rng.randrange(6)
    i = rng.randrange(len(b)) if b else 0
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del b[i:]
    elif kind == 2:
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:
        j = min(len(b), i + rng.randint(1, 256))
        b[i:i] = b[i:j] * rng.randint(1, 4)
    elif kind == 4:
        del b[i:i + rng.randint(1, 256)]
    else:
        b[i:i + 8] = b"\xff" * 8
    return bytes(b)


def mutate_pickle(data: bytes, rng: random.Random) -> bytes:
    """A ``torch.save`` zip with its ``data.pkl`` mutated and the archive rebuilt (CRCs right), so the
    mutation reaches the unpickler instead of stopping at the zip's checksum."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name in src.namelist():
            raw = src.read(name)
            z.writestr(name, mutate(raw, rng) if name.endswith("data.pkl") else raw)
    return out.getvalue()


def fuzz(path: Path, original: bytes, read: Callable[[Path], object], seed: int,
         how: Callable[[bytes, random.Random], bytes] = mutate) -> None:
    """Write :data:`MUTATIONS` mutants of ``original`` to ``path`` and read each: UserError or success only."""
    rng = random.Random(seed)
    for n in range(MUTATIONS):
        path.write_bytes(how(original, rng))
        try:
            with bounded():
                read(path)
        except UserError:
            pass
        except Exception as e:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"mutation {n} (seed {seed}) of {path.name}: {e.__class__.__name__}: {e}") from e


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("voc"), fmt="voc", images=2, imgsz=64, seed=0, progress=False)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = create_model("yolov5n", nc=2)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(path, model, ModelInfo(model.spec, ["a", "b"], 64))
    return path


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str], code: int = 2) -> str:
    with bounded():
        assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- random mutations, reader by reader


def test_fuzz_voc_xml(voc: Path, tmp_path: Path) -> None:
    xml = sorted((voc / "Annotations").glob("*.xml"))[0]
    images = {p.stem.lower(): p for p in (voc / "JPEGImages").iterdir()}
    fuzz(tmp_path / xml.name, xml.read_bytes(), lambda p: parse_xml(p, images), seed=1)


def test_fuzz_yolo_labels_and_data_yaml(tiny_data: Path, tmp_path: Path) -> None:
    label = next((tiny_data.parent / "labels" / "train").glob("*.txt"))
    fuzz(tmp_path / "a.txt", label.read_bytes(), lambda p: parse_label_file(p, 8), seed=2)
    text = tiny_data.read_text().replace("\nnc:", f"\npath: {tiny_data.parent}\nnc:", 1)
    fuzz(tmp_path / "data.yaml", text.encode(), load_data, seed=3)


def test_fuzz_images(tiny_data: Path, tmp_path: Path) -> None:
    jpg = next((tiny_data.parent / "images" / "train").glob("*.jpg"))
    ok, png = cv2.imencode(".png", cv2.imread(str(jpg)))
    assert ok

    def read(p: Path) -> None:
        verify_image(p, decode=True)
        image_size(p)
        read_image(p)

    fuzz(tmp_path / "a.jpg", jpg.read_bytes(), read, seed=4)
    fuzz(tmp_path / "a.png", png.tobytes(), read, seed=5)


def test_fuzz_safetensors_model_file(model_file: Path, tmp_path: Path) -> None:
    fuzz(tmp_path / "m.safetensors", model_file.read_bytes(), load_model, seed=6)


def test_fuzz_architecture_spec(tmp_path: Path) -> None:
    """Mutate the spec's numbers and structure (not only its bytes) and build what passes."""
    base = create_model("yolov5n", nc=2).spec.to_dict()
    rng = random.Random(7)
    values = [0, -1, 1, 3, 2**31, 10**12, 1e300, float("nan"), "64", None, [], {}, True, 16384]
    for n in range(MUTATIONS * 2):
        d = yaml.safe_load(yaml.safe_dump(base))
        table = d[rng.choice(["channels", "depths"])]
        for key in rng.sample(sorted(table), 3):
            table[key] = rng.choice(values)
        if rng.random() < 0.3:
            d[rng.choice(["nc", "strides", "anchors", "options", "family"])] = rng.choice(values)
        try:
            with bounded():
                spec = ArchSpec.from_dict(d)
                check_model_size(spec, "spec")
        except UserError:
            continue
        except Exception as e:  # pragma: no cover
            raise AssertionError(f"spec mutation {n}: {e.__class__.__name__}: {e}") from e


def test_fuzz_darknet_cfg_and_weights(tmp_path: Path) -> None:
    cfg, weights = tmp_path / "t.cfg", tmp_path / "t.weights"
    cfg.write_text(TINY_CFG)
    write_darknet(build_model(spec_from_cfg(parse_cfg(TINY_CFG), "t")), tmp_path / "w.cfg", weights)
    good_weights = weights.read_bytes()
    fuzz(tmp_path / "m.cfg", TINY_CFG.encode(), lambda p: load_darknet(weights, cfg=p), seed=8)
    fuzz(tmp_path / "m.weights", good_weights, lambda p: load_darknet(p, cfg=cfg), seed=9)


def test_fuzz_torch_checkpoints(tmp_path: Path) -> None:
    model = create_model("yolox-nano", nc=2)
    src = tmp_path / "yolox.pth"
    torch.save({"model": model.state_dict(), "start_epoch": 3}, src)
    fuzz(tmp_path / "m.pth", src.read_bytes(), lambda p: load_yolox_checkpoint(p, model="yolox-nano"), seed=10)
    small = tmp_path / "small.pt"
    torch.save({"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 1, "names": ["a"]}, small)
    fuzz(tmp_path / "s.pt", small.read_bytes(), load_torch_file, seed=11)
    fuzz(tmp_path / "p.pt", small.read_bytes(), load_torch_file, seed=12, how=mutate_pickle)


def test_fuzz_yolov5_repo_checkpoint(tmp_path: Path, ultralytics_modules: Callable[[], None]) -> None:  # noqa: F811
    src = tmp_path / "best.pt"
    _save_like_ultralytics(_ultralytics_model(nc=2), src)
    ultralytics_modules()  # their classes are gone: only the file remains, as on a user's machine
    fuzz(tmp_path / "m.pt", src.read_bytes(), import_yolov5, seed=13)
    fuzz(tmp_path / "p.pt", src.read_bytes(), import_yolov5, seed=14, how=mutate_pickle)


def test_fuzz_ultralytics_package_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "best.pt"
    write_ultralytics_checkpoint(src, names=("a", "b"))  # a YOLOv8n best.pt; its module tree is gone again
    fuzz(tmp_path / "p.pt", src.read_bytes(), import_ultralytics, seed=15, how=mutate_pickle)


# ---------------------------------------------------------------- the classic attacks


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol">""" + "".join(
    f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)) + """]>
<annotation><filename>000000.jpg</filename><object><name>&lol9;</name></object></annotation>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><filename>000000.jpg</filename><object><name>&xxe;</name></object></annotation>"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "external-entity"])
def test_xml_entity_attacks_are_refused(voc: Path, tmp_path: Path, capsys, text: str) -> None:
    root = tmp_path / "voc"
    import shutil

    shutil.copytree(voc, root)
    xml = sorted((root / "Annotations").glob("*.xml"))[0]
    xml.write_text(text)
    images = {p.stem.lower(): p for p in (root / "JPEGImages").iterdir()}
    with bounded():
        rec, problems = parse_xml(xml, images)
    assert rec is None and "DOCTYPE or entity declaration" in problems[0].message
    with bounded():
        assert main(["data", "check", "--data", str(root)]) == 1  # a problem: non-zero exit
    out = capsys.readouterr().out
    assert f"{xml}: XML does not parse" in out and "root:" not in out


def _png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height``: decoding it would allocate w*h*3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 8, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_decompression_bomb_images_are_refused_before_decoding(tiny_data: Path, tmp_path: Path) -> None:
    png = tmp_path / "bomb.png"
    png.write_bytes(_png_header_only(40000, 40000))  # 4.8 GB once decoded
    jpg_bytes = bytearray(next((tiny_data.parent / "images" / "train").glob("*.jpg")).read_bytes())
    sof = next(i for i in range(2, len(jpg_bytes) - 9) if jpg_bytes[i] == 0xFF and jpg_bytes[i + 1] in (0xC0, 0xC2))
    jpg_bytes[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    jpg = tmp_path / "bomb.jpg"
    jpg.write_bytes(bytes(jpg_bytes))
    assert 40000 * 40000 > MAX_IMAGE_PIXELS
    for path in (png, jpg):
        with bounded():
            assert "refused" in verify_image(path, decode=True)
            assert read_image(path) is None


def test_yaml_alias_bomb_and_python_tags_are_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + f"\ntrain: {tiny_data.parent}/images/train\nval: *i\nnames: [x]\n")
    err = _one_line_error(capsys, ["data", "check", "--data", str(bomb)])
    assert "alias bomb" in err
    marker = tmp_path / "executed"
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(f'train: !!python/object/apply:os.system ["touch {marker}"]\nval: x\nnames: [a]\n')
    err = _one_line_error(capsys, ["data", "check", "--data", str(tagged)])
    assert "could not determine a constructor" in err and not marker.exists()
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text(f'lr0: !!python/object/apply:os.system ["touch {marker}"]\n')
    err = _one_line_error(capsys, ["train", "--data", str(tiny_data), "--model", "yolov5n", "--hyp", str(hyp),
                                   "--out", str(tmp_path / "run")])
    assert "not valid YAML" in err and not marker.exists()
    with pytest.raises(yaml.YAMLError, match="recursive"):
        (tmp_path / "r.yaml").write_text("a: &a [*a]\n")
        load_yaml_file(tmp_path / "r.yaml")


def test_safetensors_header_claiming_terabytes(tmp_path: Path, capsys) -> None:
    huge_len = tmp_path / "huge-header.safetensors"
    huge_len.write_bytes(struct.pack("<Q", 1 << 42) + b'{"__metadata__":{}}')
    huge_tensor = tmp_path / "huge-tensor.safetensors"
    header = (b'{"w":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]},'
              b'"__metadata__":{"format":"' + FORMAT.encode() + b'"}}')
    huge_tensor.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    for path in (huge_len, huge_tensor):
        err = _one_line_error(capsys, ["info", "--weights", str(path)])
        assert err.startswith(f"error: {path}:")


@pytest.mark.parametrize("width,words", [(10**7, "outside 1..16384"),
                                         (16384, "parameters, more than 1,000,000,000")])
def test_spec_with_absurd_channel_counts_is_refused_before_allocating(tmp_path: Path, capsys, width: int,
                                                                      words: str) -> None:
    model = create_model("yolov5n", nc=2)
    spec = model.spec.to_dict()
    spec["channels"] = {k: width for k in spec["channels"]}
    path = tmp_path / "absurd.safetensors"
    meta = {"format": FORMAT, "spec": ArchSpec(**spec).to_json(), "names": '["a", "b"]', "imgsz": "64",
            "history": "[]"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    err = _one_line_error(capsys, ["info", "--weights", str(path)])
    assert words in err


class _CallsAFunction:
    """Unpickling this calls ``os.system``: the textbook malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return os.system, (f"touch {self.marker}",)


class _CallsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize("payload", [_CallsAFunction, _CallsEval], ids=["os.system", "eval"])
def test_pickles_that_call_functions_run_nothing(tmp_path: Path, capsys, payload: type) -> None:
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    torch.save({"model": payload(marker), "epoch": 0}, evil)
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        load_torch_file(evil)
    for source in ("yolov5", "yolox"):
        err = _one_line_error(capsys, ["import", "--from", source, str(evil), "--out", str(tmp_path / "x.safetensors")])
        assert "nothing in the file was executed" in err
    err = _one_line_error(capsys, ["val", "--weights", str(evil), "--data", str(tmp_path)])
    assert "not a yoloslim model file" in err
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


def test_huge_darknet_cfg_is_refused_before_allocating(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "huge.cfg"
    cfg.write_text(TINY_CFG.replace("filters=16", "filters=100000000", 1))
    weights = tmp_path / "w.weights"
    weights.write_bytes(struct.pack("<iiiq", 0, 2, 0, 0) + b"\0" * 400)
    err = _one_line_error(capsys, ["import", "--from", "darknet", str(weights), "--cfg", str(cfg), "--out",
                                   str(tmp_path / "x.safetensors")])
    assert "refused before allocating" in err or "outside" in err
