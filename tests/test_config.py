from dataclasses import dataclass

import pytest

from yoloslim.config import load_yaml_config, parse_overrides
from yoloslim.errors import UserError


@dataclass
class Hyp:
    lr0: float = 0.01
    mosaic: float = 1.0
    nesterov: bool = True


def test_yaml_and_overrides_update_defaults(tmp_path):
    (tmp_path / "h.yaml").write_text("lr0: 0.02\n")
    hyp = load_yaml_config(Hyp, tmp_path / "h.yaml", parse_overrides(["mosaic=0"]))
    assert hyp == Hyp(lr0=0.02, mosaic=0.0, nesterov=True)


def test_unknown_key_suggests_the_close_one(tmp_path):
    (tmp_path / "h.yaml").write_text("lr0s: 0.02\n")
    with pytest.raises(UserError, match="unknown key 'lr0s' \\(did you mean 'lr0'\\?\\)"):
        load_yaml_config(Hyp, tmp_path / "h.yaml")


def test_wrong_type_is_refused():
    with pytest.raises(UserError, match="must be a number"):
        load_yaml_config(Hyp, None, {"lr0": "fast"})
