"""``yoloslim import``: turn another project's checkpoint into a yoloslim model file.

Every importer has the same signature::

    fn(src: Path, *, cfg: Path | None, model: str | None, names: list[str] | None)
        -> tuple[nn.Module, ModelInfo]

``cfg`` is the source project's architecture file (a YOLOv5 yaml, a darknet ``.cfg``), ``model`` a
yoloslim preset name when the source file does not say which model it is (YOLOX), ``names`` class
names given by the user (``None``: the importer's own, from the file or ``class0``...). The returned
model is float32 with the source's weights; ``ModelInfo.history`` is left empty (this workflow adds
the ``imported`` event).
"""

from __future__ import annotations

from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models import FAMILIES
from yoloslim.models.family import Family
from yoloslim.models.io import ModelInfo, check_writable, load_model, save_model
from yoloslim.models.profile import count_params
from yoloslim.safe_parse import load_yaml_file, yaml_error_reason
from yoloslim.workflows.report import write_json

Importer = Callable[..., tuple[nn.Module, ModelInfo]]

# source format -> the family whose record names its importer (a family registers its own sources).
IMPORTERS: dict[str, Family] = {source: f for f in FAMILIES.values() for source in f.importers}


def import_checkpoint(source: str, src: str | Path, out: str | Path, cfg: str | Path | None = None,
                      model: str | None = None, names: str | Path | None = None,
                      json_file: str | Path | None = None) -> dict[str, Any]:
    """Import ``src`` (a ``source``-format checkpoint) and write it to ``out`` as a yoloslim model file.

    The written file is read back and run against the imported model on one random input; any
    difference is an error, so a file that exists is a faithful copy.

    Returns:
        The summary printed (and written to ``json_file``): model, family, nc, params, max difference.
    """
    if source not in IMPORTERS:
        close = get_close_matches(source, list(IMPORTERS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"--from {source!r} is unknown{hint}; choose from {', '.join(sorted(IMPORTERS))}")
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise UserError(f"{src}: no such file")
    if src.suffix == ".safetensors":
        raise UserError(f"{src}: already a .safetensors file; pass a yoloslim model file to --weights")
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: yoloslim model files end in .safetensors")
    if out.resolve() == src.resolve():
        raise UserError("--out must differ from the source file")
    check_writable(out, "--out")
    check_writable(json_file, "--json")
    class_names = read_names(names) if names else None
    importer: Importer = IMPORTERS[source].importer(source)
    net, info = importer(src, cfg=Path(cfg) if cfg else None, model=model, names=class_names)
    info = info.with_event("imported", source=source, file=src.name)
    save_model(out, net, info)
    diff = _round_trip_diff(net, out, info.spec.input_scale)
    if diff > 1e-5:
        raise UserError(f"{out}: the written model differs from the imported one by {diff:.3g}; "
                        "please report this")
    summary = {"source": source, "file": str(src), "out": str(out), "model": info.spec.name,
               "family": info.spec.family, "nc": info.spec.nc, "names": info.names,
               "params": count_params(net), "round_trip_max_diff": diff}
    print(f"imported {src} ({source}) -> {out}: {info.spec.name}, {info.spec.nc} classes, "
          f"{summary['params']:,} parameters")
    if json_file:
        write_json(json_file, summary)
    return summary


def read_names(path: str | Path) -> list[str]:
    """Class names from a text file (one a line) or a yaml with ``names:`` (a list or ``{0: name}``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--names {path}: no such file")
    if path.suffix in (".yaml", ".yml"):
        try:
            data = load_yaml_file(path)
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({yaml_error_reason(e)})") from None
        raw = data.get("names") if isinstance(data, dict) else data
        if isinstance(raw, dict):
            raw = [raw[k] for k in sorted(raw)]
        if not isinstance(raw, list) or not raw:
            raise UserError(f"{path}: expected a 'names:' list or mapping of class names")
        return [str(n) for n in raw]
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path}: no class names in the file")
    return names


@torch.no_grad()
def _round_trip_diff(net: nn.Module, path: Path, scale: float) -> float:
    loaded, _ = load_model(path)
    net.eval()
    loaded.eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * (scale * 255)
    return max(float((a - b).abs().max()) for a, b in zip(net(x), loaded(x), strict=True))
