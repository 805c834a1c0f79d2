"""The contract every model honours, checked for every name in ``MODELS`` (a new model joins by being
registered): build, forward shapes, no NaN, every parameter gets a gradient, spec keys equal conv
names, the channel graph traces, pruning keeps masked == compact, save -> load is identical,
fused == unfused, ONNX == PyTorch. Family-specific facts (exact sizes, key layouts, import parity)
stay in the family's own test files.

Speed: the full presets hold up to 99 M parameters, so the contract runs on each preset's spec
scaled down (:func:`tiny`): every width multiplied by ``MAX_WIDTH / widest`` (at least 4; the
head's prediction convs keep theirs), depths unchanged (so every block of the preset is built). The scaled spec is a
spec with smaller numbers, exactly what pruning makes, so it builds through the same builder. The
spec-keys check runs on the full preset, built on the meta device (no weights allocated). ONNX
export, the slowest part, runs on :data:`ONNX_MODELS`: the smallest presets that together hold every
module type (and every family's decoding) of every model; a test keeps that list complete.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from helpers import max_diff, randomize_bn
from yoloslim.deploy.fuse import count_batchnorms, fuse_model
from yoloslim.deploy.onnx_export import OnnxModel, export_onnx, read_metadata, relative_diff
from yoloslim.errors import UserError
from yoloslim.models import FAMILIES, MODELS, build_model, family_of
from yoloslim.models.decode import DecodedModel, check_input, decode_style
from yoloslim.models.family import DECODE_STYLES
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.models.profile import count_params
from yoloslim.models.spec import ArchSpec
from yoloslim.prune.allocate import plan_channels
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.importance import BNScale, FilterNorm, GroupNorm
from yoloslim.prune.surgery import apply_plan, mask_model

NC = 2
IMGSZ = 64
MAX_WIDTH = 32  # the widest conv of a scaled-down preset
NAMES = list(MODELS)
# the smallest presets that together hold every module type of every model (test_onnx_models_cover_every_module_type)
ONNX_MODELS = ["yolov3-tiny", "yolov3-lite", "yolov5n", "yolov3", "yolov3-spp", "yolox-tiny", "yolov3-mobilenetv2",
               "yolox-nano", "yolo11m"]
# (importance, global ranking): the network-slimming threshold, per-layer L1, normalised group norm
IMPORTANCES = {"slim": (BNScale(), True), "l1": (FilterNorm(1), False), "group": (GroupNorm(normalize=True), True)}


@functools.cache
def _preset(name: str) -> tuple[ArchSpec, nn.Module]:
    with torch.device("meta"):
        spec = MODELS[name](NC)
        return spec, build_model(spec.copy())


def preset_spec(name: str) -> ArchSpec:
    """The full preset's spec, recorded on the meta device (no weights allocated)."""
    return _preset(name)[0].copy()


def meta_model(name: str) -> nn.Module:
    """The full preset built on the meta device (shapes only; shared, do not change it)."""
    return _preset(name)[1]


def module_types(name: str) -> set[str]:
    """What ONNX export must get right in a model: its family (decoding), module classes, depthwise
    convs and max-pool kernel sizes."""
    model = meta_model(name)
    kinds = {model.spec.family} | {type(m).__name__ for m in model.modules()}
    kinds |= {"depthwise" for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    return kinds | {f"MaxPool2d({m.kernel_size})" for m in model.modules() if isinstance(m, nn.MaxPool2d)}


def tiny(spec: ArchSpec) -> ArchSpec:
    """``spec`` scaled down: widths × ``MAX_WIDTH / widest`` (at least 4); depths stay the preset's.

    Equal widths stay equal (a residual add or a depthwise conv keeps fitting its input), so the
    scaled spec builds like any pruned one.
    """
    small = spec.copy()
    widest = max(spec.channels.values())
    if widest > MAX_WIDTH:
        small.channels = {k: max(4, round(c * MAX_WIDTH / widest)) for k, c in spec.channels.items()}
        for conv, sizes in small.options.get("split", {}).items():  # a split conv's pieces (YOLOv8's C2f)
            sizes[:] = [max(4, round(c * MAX_WIDTH / widest)) for c in sizes]
            small.channels[conv] = sum(sizes)
    return small


def tiny_model(name: str, seed: int = 0) -> nn.Module:
    """The scaled-down preset, random weights and batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    return randomize_bn(build_model(tiny(preset_spec(name))), seed)


def image(spec: ArchSpec, b: int = 2, seed: int = 0) -> torch.Tensor:
    """A (b, 3, 64, 64) input in the model's own convention (0..1 or 0..255)."""
    return check_input(spec, b, IMGSZ, IMGSZ, seed=seed)


def test_every_model_belongs_to_a_registered_family():
    """MODELS is the union of the families' presets, and every family's record resolves."""
    assert sorted(MODELS) == sorted(n for f in FAMILIES.values() for n in f.presets)
    for family in FAMILIES.values():
        assert family.decode in DECODE_STYLES
        assert isinstance(family.loss_class(), type)
        for source in family.importers:
            assert callable(family.importer(source))


def test_a_spec_without_options_takes_its_familys_convention():
    for family in FAMILIES.values():
        spec = ArchSpec(family=family.name, name="bare", nc=1)
        assert (spec.input_bgr, spec.input_scale, decode_style(spec)) == (
            family.input_bgr, family.input_scale, family.decode)
    spec = ArchSpec(family="yolox", name="x", nc=1, options={"input_bgr": False, "decode": "darknet"})
    assert (spec.input_bgr, decode_style(spec)) == (False, "darknet")  # the spec's options win
    with pytest.raises(UserError, match="unknown model family 'nosuch'"):
        _ = ArchSpec(family="nosuch", name="x", nc=1).input_bgr


@pytest.mark.parametrize("name", NAMES)
def test_spec_keys_are_the_conv_names(name):
    spec = preset_spec(name)
    fam = family_of(spec)
    assert spec.name == name and fam.name == spec.family
    assert (spec.input_bgr, spec.input_scale) == (fam.input_bgr, fam.input_scale)
    model = meta_model(name)
    assert isinstance(model, fam.builder)
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    head = {n for n, m in model.named_modules() if any(m is c for c in model.head_convs)}
    assert set(spec.channels) <= convs  # the spec names convs only
    assert convs - head <= set(spec.channels)  # and every conv but the head's fixed outputs
    assert all(spec.channels[n] == m.out_channels for n, m in model.named_modules() if n in spec.channels)


@pytest.mark.parametrize("name", NAMES)
def test_forward_gradients_graph_and_pruning(name):
    model = tiny_model(name)
    spec = model.spec
    x = image(spec)
    # forward shapes, finite outputs
    with torch.no_grad():
        ref = model(x)
    no = 4 * spec.options["reg_max"] + NC if decode_style(spec) == "dfl" else spec.num_anchors * (5 + NC)
    assert [tuple(o.shape) for o in ref] == [(2, no, IMGSZ // s, IMGSZ // s) for s in spec.strides]
    assert all(torch.isfinite(o).all() for o in ref)
    # every trainable parameter gets a gradient (YOLOv8's DFL conv is fixed)
    model.train()
    sum(o.square().mean() for o in model(x)).backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert missing == []
    model.zero_grad(set_to_none=True)
    model.eval()
    # the channel graph traces, with prunable groups and the head's outputs fixed
    graph = ChannelGraph.trace(model)
    assert graph.prunable and len(graph.prunable) < len(graph.groups)
    # masked == compact for each importance
    for method, (imp, global_rank) in IMPORTANCES.items():
        plan = plan_channels(model, graph, imp, ratio=0.5, global_rank=global_rank, min_channels=1, round_to=1)
        compact, masked = apply_plan(model, plan).eval(), mask_model(model, plan).eval()
        with torch.no_grad():
            a, b = masked(x), compact(x)
        assert max_diff(a, b) < 1e-4, method
        assert max_diff(a, ref) > 1e-3, method  # the plan changed something
        assert count_params(compact) < 0.6 * count_params(model), method
        assert [o.shape for o in b] == [o.shape for o in ref], method


@pytest.mark.parametrize("name", NAMES)
def test_save_load_and_fuse(name, tmp_path):
    model = tiny_model(name)
    x = image(model.spec)
    path = save_model(tmp_path / "m.safetensors", model, ModelInfo(model.spec, ["a", "b"], IMGSZ))
    loaded, info = load_model(path)
    loaded.eval()
    assert info.spec.to_json() == model.spec.to_json()
    own, back = model.state_dict(), loaded.state_dict()
    assert list(own) == list(back) and all(torch.equal(own[k], back[k]) for k in own)
    bns = count_batchnorms(model)
    fused = fuse_model(model)
    assert count_batchnorms(fused) == 0 < bns == count_batchnorms(model)  # the original is untouched
    assert count_params(fused) < count_params(model)
    with torch.no_grad():
        ref, again, fast = model(x), loaded(x), fused(x)
    assert max_diff(ref, again) == 0.0
    assert max_diff(ref, fast) < 1e-4


def test_onnx_models_cover_every_module_type():
    covered = set().union(*(module_types(n) for n in ONNX_MODELS))
    missing = {n: sorted(module_types(n) - covered) for n in NAMES if module_types(n) - covered}
    assert missing == {}, "add the smallest model holding these to ONNX_MODELS"


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_onnx_matches_pytorch(name, tmp_path):
    model = tiny_model(name)
    path = export_onnx(model, ModelInfo(model.spec, ["a", "b"], IMGSZ), tmp_path / "m.onnx", IMGSZ)  # checked
    meta = read_metadata(path)
    assert meta["family"] == model.spec.family
    assert meta["input_channels"] == ("BGR" if model.spec.input_bgr else "RGB")
    assert meta["input_range"] == ("0..255" if model.spec.input_scale == 1.0 else "0..1")
    x = image(model.spec, b=1, seed=7)
    with torch.no_grad():
        ref = DecodedModel(model).eval()(x).numpy()
    assert relative_diff(OnnxModel(path)(x).numpy(), ref) < 1e-4
