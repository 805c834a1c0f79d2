import subprocess
import sys

import pytest
import torch

from yoloslim.engine.train_state import load_state, save_state
from yoloslim.errors import UserError
from yoloslim.models import build_model, model_spec
from yoloslim.models.io import ModelInfo, load_model, read_info, save_model


def _model_file(tmp_path):
    spec = model_spec("yolov5n", nc=2)
    spec.channels["model.4.m.0.cv1.conv"] = 7
    model = build_model(spec).eval()
    info = ModelInfo(spec, ["a", "b"], 64).with_event("trained", epochs=1)
    return save_model(tmp_path / "m.safetensors", model, info), model


def test_save_load_round_trip_in_fresh_process(tmp_path):
    path, model = _model_file(tmp_path)
    x = torch.rand(1, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    ref = model(x)
    code = (
        "import torch,sys; from yoloslim.models.io import load_model;"
        f"m,i=load_model(r'{path}'); m.eval(); x=torch.load(r'{tmp_path / 'x.pt'}');"
        f"torch.save([o for o in m(x)], r'{tmp_path / 'y.pt'}'); print(i.names, i.history[0]['action'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "['a', 'b'] trained" in out
    got = torch.load(tmp_path / "y.pt")
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ref, got, strict=True))


def test_pruned_width_survives_save_load(tmp_path):
    path, _ = _model_file(tmp_path)
    model, info = load_model(path)
    assert model.model[4].m[0].cv1.conv.out_channels == 7
    assert info.spec.channels["model.4.m.0.cv1.conv"] == 7


def test_shape_mismatch_is_an_error(tmp_path):
    path, _ = _model_file(tmp_path)
    info = read_info(path)
    info.spec.channels["model.4.m.0.cv1.conv"] = 8  # header now disagrees with the weights
    model = build_model(model_spec("yolov5n", nc=2))
    save_model(tmp_path / "good.safetensors", model, ModelInfo(info.spec, info.names))
    with pytest.raises(UserError, match="shape mismatch"):
        load_model(tmp_path / "good.safetensors")


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a readable"):
        load_model(tmp_path / "junk.safetensors")


def test_training_state_round_trip(tmp_path):
    state = {"epoch": 3, "opt": {"lr": 0.01}, "t": torch.arange(4)}
    save_state(tmp_path / "s.pt", state)
    back = load_state(tmp_path / "s.pt")
    assert back["epoch"] == 3 and torch.equal(back["t"], state["t"])
    assert not list(tmp_path.glob("*.tmp"))
