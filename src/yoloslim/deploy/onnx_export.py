"""ONNX export of a fused, decoded detector, checked against PyTorch in ONNX Runtime.

The exported file
-----------------
* input ``images``: float32 ``(batch, 3, height, width)``, letterboxed to ``imgsz`` (grey 114 padding),
  in the model family's own convention, which the metadata states: ``input_channels`` (``RGB`` for
  YOLOv5 / YOLOv3, ``BGR`` for YOLOX) and ``input_range`` (``0..1`` or ``0..255``).
* output ``output``: float32 ``(batch, N, 5 + nc)``, one row per anchor position:
  ``cx, cy, w, h`` in input pixels, objectness probability, class probabilities. The score of a
  class is objectness × class probability.
* with ``nms=True`` the first output is ``detections``: float32 ``(K, 7)``, one row per final
  detection of the whole batch: ``batch_index, x1, y1, x2, y2, score, class`` (corners in input
  pixels). It is ONNX ``NonMaxSuppression`` run per class (class-aware, like
  :func:`yoloslim.models.nms.non_max_suppression` with ``multi_label=True``) with the thresholds
  given at export (``conf``, ``iou``; at most ``max_det`` boxes per class and image), stored in the
  metadata. Rows are grouped by image and class, highest score first within a class. ``output``
  follows as the second output.
* with ``half=True`` the weights and every computation are float16 (for GPUs and accelerators that run
  float16: TensorRT, a Jetson, ONNX Runtime's CUDA provider); the input and output stay float32 (a
  cast at each end), so code written for a float32 file, NMS included, runs on it unchanged.
* metadata (``metadata_props``): ``input_channels``, ``input_range``, ``input_layout``, ``names``
  (JSON list), ``stride`` (largest), ``strides`` (JSON), ``imgsz``, ``dynamic``, ``family``,
  ``model``, ``nc``, ``layout``, ``output_layout``, ``nms`` (JSON thresholds or ``null``),
  ``precision`` (``float32`` or ``float16``), ``yoloslim_version``.

``layout="ultralytics"`` instead writes what ultralytics' own export of a detect model writes, so that
code written for their files runs on ours unchanged: input ``images`` RGB in 0..1 whatever the family
(YOLOX's BGR 0..255 convention is applied inside the graph), one output ``output0``: float32
``(batch, 4 + nc, N)``, rows ``cx, cy, w, h`` (input pixels) then one score per class, no objectness
column. A class's score is the same number the yoloslim layout gives (objectness × class probability;
the DFL head of the YOLOv8 family has no objectness, its score is the class probability), so the two
layouts keep the same detections. Metadata as above plus ultralytics' ``task`` and ``batch``; no NMS.

The check
---------
``onnx.checker`` validates the file, then ONNX Runtime runs it on a fixed pseudo-random image and
the output is compared with the unfused PyTorch model's. The difference is measured relative to the
magnitude of each value, ``|onnx - torch| / max(1, |torch|)`` (probabilities absolutely, pixel
coordinates relatively: float32 cannot hold 600-pixel coordinates to 1e-4 absolutely). A difference
above 1e-4 (:data:`HALF_TOLERANCE` for a float16 file, still against the float32 model) fails the
export, naming the number, and no file is written.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from yoloslim import __version__
from yoloslim.deploy.fuse import fuse_model
from yoloslim.errors import UserError
from yoloslim.log import logger
from yoloslim.models.decode import DecodedModel, check_input
from yoloslim.models.io import ModelInfo, atomic_write
from yoloslim.models.spec import ArchSpec, check_imgsz

TOLERANCE = 1e-4
# float16 keeps 11 significant bits (a relative step of 2^-11 = 4.9e-4) and every layer rounds again
HALF_TOLERANCE = 1e-2
MIN_OPSET = 17
MAX_OPSET = 20  # the newest opset the TorchScript exporter writes
INPUT = "images"
OUTPUT = "output"
DETECTIONS = "detections"
LAYOUTS = ("yoloslim", "ultralytics")  # --layout: the output tensor's arrangement, see the module docstring
ULTRALYTICS_OUTPUT = "output0"  # the output name of ultralytics' own ONNX files


@dataclass
class ExportCheck:
    """What the parity check measured: the largest difference per input shape checked."""

    diffs: dict[str, float]

    @property
    def max_diff(self) -> float:
        return max(self.diffs.values())


def export_onnx(model: nn.Module, info: ModelInfo, out: str | Path, imgsz: int, dynamic: bool = False,
                nms: bool = False, opset: int = MIN_OPSET, check: bool = True, *, conf: float = 0.25,
                iou: float = 0.45, max_det: int = 300, half: bool = False,
                device: torch.device | None = None, layout: str = "yoloslim") -> Path:
    """Fuse, decode and export ``model`` to ``out`` as ONNX, then check it against PyTorch.

    Args:
        model: a yoloslim detector (its ``spec`` says the family and the input convention).
        info: the model file's metadata (class names).
        out: the ``.onnx`` file to write; written only when the check passes.
        imgsz: input size (a multiple of the largest stride); the traced size with ``dynamic``.
        dynamic: batch, height and width as symbolic dimensions.
        nms: append ONNX NonMaxSuppression (see the module docstring for the output layout).
        opset: ONNX opset, 17 or newer.
        check: run onnx.checker and the ONNX Runtime parity check.
        conf: with ``nms``, the score threshold baked into the file.
        iou: with ``nms``, the IoU threshold baked into the file.
        max_det: with ``nms``, the boxes kept per class and image.
        half: float16 weights and computation (float32 input and output).
        device: where the model is traced (default cpu; the file is the same on any device).
        layout: ``"yoloslim"`` (rows of ``5 + nc``) or ``"ultralytics"`` (``(batch, 4 + nc, N)`` as
            ultralytics' export; RGB 0..1 input for every family); see the module docstring.

    Returns:
        The path written.

    Raises:
        UserError: bad size or opset, or the exported file computes something else than PyTorch.
    """
    return export_checked(model, info, out, imgsz, dynamic, nms, opset, check, conf=conf, iou=iou,
                          max_det=max_det, half=half, device=device, layout=layout)[0]


def export_checked(model: nn.Module, info: ModelInfo, out: str | Path, imgsz: int, dynamic: bool = False,
                   nms: bool = False, opset: int = MIN_OPSET, check: bool = True, *, conf: float = 0.25,
                   iou: float = 0.45, max_det: int = 300, half: bool = False,
                   device: torch.device | None = None, layout: str = "yoloslim",
                   ) -> tuple[Path, ExportCheck | None]:
    """:func:`export_onnx` that also returns what the parity check measured (None without ``check``)."""
    spec: ArchSpec = model.spec
    check_imgsz(imgsz, spec)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    if nms and not (0 <= conf <= 1 and 0 <= iou <= 1 and max_det >= 1):
        raise UserError(f"NMS needs conf and iou in 0..1 and max_det >= 1, got {conf}, {iou}, {max_det}")
    if layout not in LAYOUTS:
        raise UserError(f"unknown --layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if nms and layout == "ultralytics":
        raise UserError("--nms writes yoloslim's detections output; export --layout ultralytics without --nms "
                        "(their detect files leave NMS to the caller)")
    out = Path(out)
    model = copy.deepcopy(model).cpu().float().eval()  # the caller's model keeps its mode and device
    fused = fuse_model(model)
    decoded = DecodedModel(Float16(fused) if half else fused).eval()
    reference = DecodedModel(model).eval()
    if layout == "ultralytics":
        decoded, reference = UltralyticsLayout(decoded).eval(), UltralyticsLayout(reference).eval()
    nms_args = {"conf": conf, "iou": iou, "max_det": max_det} if nms else None
    result: list[ExportCheck] = []

    def write(tmp: str) -> None:
        proto = _trace(decoded, spec, imgsz, dynamic, opset, device or torch.device("cpu"))
        if nms:
            _append_nms(proto, conf, iou, max_det)
        helper.set_model_props(proto, metadata(spec, info.names, imgsz, dynamic, nms_args, half, layout))
        onnx.save(proto, tmp)
        if check:
            result.append(check_onnx(tmp, reference, imgsz, dynamic, HALF_TOLERANCE if half else TOLERANCE))
            r = result[0]
            logger.info(f"ONNX parity: max difference {r.max_diff:.2e} ({', '.join(r.diffs)})")

    atomic_write(out, write)
    return out, (result[0] if result else None)


class Float16(nn.Module):
    """A detector run in float16 between a float32 input and float32 raw maps (decoded in float32: ONNX's
    ``Range``, which builds the grids, takes no float16)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()
        self.spec = model.spec

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [p.float() for p in self.model(x.half())]


def metadata(spec: ArchSpec, names: list[str], imgsz: int, dynamic: bool,
             nms: dict[str, float] | None, half: bool = False, layout: str = "yoloslim") -> dict[str, str]:
    """The ``metadata_props`` of an exported file (all values are strings)."""
    rows = "output: (batch, N, 5+nc) cx,cy,w,h (input pixels), objectness, class probabilities"
    if nms:
        rows = ("detections: (K, 7) batch_index,x1,y1,x2,y2,score,class (input pixels, per-class NMS); "
                + rows)
    ours = layout != "ultralytics"
    extra = {} if ours else {"task": "detect", "batch": "1"}
    if not ours:
        rows = f"{ULTRALYTICS_OUTPUT}: (batch, 4+nc, N) cx,cy,w,h (input pixels), class scores"
    return {
        "input_channels": "BGR" if ours and spec.input_bgr else "RGB",
        "input_range": "0..1" if not ours or abs(spec.input_scale - 1.0) > 1e-9 else "0..255",
        "input_layout": "NCHW float32, letterboxed to imgsz with grey (114) padding",
        "names": json.dumps(list(names)),
        "stride": str(max(spec.strides)),
        "strides": json.dumps(list(spec.strides)),
        "imgsz": str(imgsz),
        "dynamic": json.dumps(bool(dynamic)),
        "family": spec.family,
        "model": spec.name,
        "nc": str(spec.nc),
        "layout": layout,
        "output_layout": rows,
        "nms": json.dumps(nms),
        "precision": "float16" if half else "float32",
        "yoloslim_version": __version__,
        **extra,
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (without loading the weights).

    Raises:
        UserError: the file is not an ONNX file (a model file, a checkpoint, anything else).
    """
    with open(path, "rb") as f:
        head = f.read(10)
    if head[:2] == b"PK":
        raise UserError(f"{path}: a torch.save checkpoint, not an ONNX file; export a model with `yoloslim export`")
    if len(head) == 10 and head[8:10] == b'{"':  # 8-byte header length, then the JSON header
        raise UserError(f"{path}: a .safetensors model file, not an ONNX file; pass it as --weights, or run "
                        f"`yoloslim export --weights {path}` and give the .onnx it writes")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the bytes are not an ONNX model
        raise UserError(f"{path}: not an ONNX file ({e.__class__.__name__})") from None
    if not proto.graph.node:
        raise UserError(f"{path}: not an ONNX file (no graph)")
    return {p.key: p.value for p in proto.metadata_props}


class ParityError(UserError):
    """The exported file runs, but its outputs differ from PyTorch's by more than the tolerance.

    Args:
        diff: the largest relative difference (:func:`relative_diff`).
        tolerance: what was allowed.
        at: the input shape it was measured at, ``"BxCxHxW"``.
    """

    def __init__(self, diff: float, tolerance: float, at: str) -> None:
        self.diff, self.tolerance, self.at = diff, tolerance, at
        super().__init__(f"{self.what()}; the file was not written")

    def what(self) -> str:
        return f"ONNX Runtime output differs from PyTorch by {self.diff:.3g} (> {self.tolerance:g}) at input {self.at}"


def check_onnx(path: str | Path, reference: nn.Module, imgsz: int, dynamic: bool,
               tolerance: float = TOLERANCE) -> ExportCheck:
    """``onnx.checker`` plus ONNX Runtime against ``reference`` (a decoded PyTorch model).

    Static files are run at ``(1, 3, imgsz, imgsz)``; dynamic ones also at batch 2 and a
    non-square size, to prove the symbolic dimensions work.

    Raises:
        UserError: the file is invalid or differs from PyTorch by more than ``tolerance``.
    """
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise UserError(f"the exported ONNX file is invalid: {e}") from None
    session = OnnxModel(path).session
    output = getattr(reference, "output_name", OUTPUT)
    input_spec = getattr(reference, "input_spec", reference.model.spec)
    shapes = [(1, imgsz, imgsz)]
    if dynamic:
        stride = int(max(reference.model.spec.strides))
        shapes.append((2, imgsz, imgsz - stride if imgsz > stride else imgsz + stride))
    diffs = {}
    for b, h, w in shapes:
        x = check_input(input_spec, b, h, w)
        with torch.no_grad():
            expected = reference(x).numpy()
        got = session.run([output], {INPUT: x.numpy()})[0]
        if got.shape != expected.shape:
            raise UserError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape} "
                            f"at {b}x3x{h}x{w}")
        diffs[f"{b}x3x{h}x{w}"] = relative_diff(got, expected)
    worst = max(diffs, key=diffs.get)
    if not diffs[worst] <= tolerance:
        raise ParityError(diffs[worst], tolerance, worst)
    return ExportCheck(diffs)


def relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max(1, |b|)``: absolute for values up to 1, relative for larger ones."""
    if a.size == 0:
        return 0.0
    return float((np.abs(a.astype(np.float64) - b) / np.maximum(1.0, np.abs(b))).max())


class OnnxModel:
    """An exported file in ONNX Runtime, called like the decoded PyTorch model.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (None: its default).
        spinning: let the worker threads spin-wait between runs (ONNX Runtime's default: lowest latency
            for a session that runs alone; off where sessions or PyTorch take turns on the same cores).
        profile_prefix: record ONNX Runtime's profile (per-node times) into ``<prefix>_<date>.json``;
            ``session.end_profiling()`` writes it and returns the path.
    """

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True,
                 profile_prefix: str | Path | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such ONNX file")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix is not None:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(profile_prefix)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for a bad file
            raise UserError(f"{path}: ONNX Runtime cannot load it ({e.__class__.__name__}: {e})") from None
        self.meta = self.session.get_modelmeta().custom_metadata_map
        self.ultralytics = self.meta.get("layout") == "ultralytics"
        self.output = ULTRALYTICS_OUTPUT if self.ultralytics else OUTPUT
        if self.output not in {o.name for o in self.session.get_outputs()}:
            raise UserError(f"{path}: not a yoloslim export (no '{self.output}' output)")
        shape = self.session.get_inputs()[0].shape  # [b, 3, h, w], ints or names
        self.static_hw = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, h, w) preprocessed float -> (b, N, 5 + nc) decoded rows (an ultralytics-layout file's
        ``(b, 4 + nc, N)`` comes back as rows with objectness 1 and the class scores)."""
        if self.static_hw and tuple(x.shape[2:]) != self.static_hw:
            h, w = self.static_hw
            raise UserError(f"the ONNX file was exported for {h}x{w} input, got {x.shape[2]}x{x.shape[3]}; "
                            "pass the export's --imgsz or export with --dynamic")
        out = torch.from_numpy(self.session.run([self.output], {INPUT: x.detach().cpu().float().numpy()})[0])
        if self.ultralytics:
            out = out.transpose(1, 2)  # (b, N, 4 + nc)
            out = torch.cat((out[..., :4], torch.ones_like(out[..., :1]), out[..., 4:]), -1)  # (b, N, 5 + nc)
        return out

    def run(self, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
        """Raw ``session.run`` on a float32 array."""
        return self.session.run(outputs, {INPUT: x})


def _trace(decoded: nn.Module, spec: ArchSpec, imgsz: int, dynamic: bool, opset: int,
           device: torch.device) -> onnx.ModelProto:
    """Export with the TorchScript exporter (on ``device``) into memory and return the ModelProto."""
    import io
    import warnings

    decoded = decoded.to(device)
    x = check_input(getattr(decoded, "input_spec", spec), 1, imgsz, imgsz).to(device)
    output = getattr(decoded, "output_name", OUTPUT)
    ultralytics = output == ULTRALYTICS_OUTPUT
    axes = None
    if dynamic:
        axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, output: {0: "batch", 2 if ultralytics else 1: "anchors"}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer/deprecation warnings: the parity check is the proof
        torch.onnx.export(decoded, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[output], dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    # the tracer leaves the row length symbolic in dynamic files; it is always 5 + nc (4 + nc)
    row = proto.graph.output[0].type.tensor_type.shape.dim[1 if ultralytics else 2]
    row.Clear()
    row.dim_value = (4 if ultralytics else 5) + spec.nc
    return proto


class UltralyticsLayout(nn.Module):
    """A decoded model seen as ultralytics' detect export: RGB 0..1 in, ``(b, 4 + nc, N)`` out.

    The family's input convention is applied inside (BGR channel order, the 0..255 range of YOLOX),
    and a class's score is objectness × class probability, the score the yoloslim layout implies.

    Args:
        decoded: a :class:`DecodedModel`.
    """

    output_name = ULTRALYTICS_OUTPUT

    def __init__(self, decoded: DecodedModel) -> None:
        super().__init__()
        self.decoded = decoded
        self.model = decoded.model
        self.input_spec = decoded.model.spec.copy()  # what the file takes: RGB, 0..1
        self.input_spec.options.update(input_bgr=False, input_scale=1 / 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.model.spec
        if spec.input_bgr:
            x = x.flip(1)
        factor = 255 * spec.input_scale
        if abs(factor - 1.0) > 1e-9:
            x = x * factor
        rows = self.decoded(x)  # (b, N, 5 + nc)
        scores = rows[..., 4:5] * rows[..., 5:]  # (b, N, nc)
        return torch.cat((rows[..., :4], scores), -1).transpose(1, 2)  # (b, 4 + nc, N)


def _append_nms(proto: onnx.ModelProto, conf: float, iou: float, max_det: int) -> None:
    """Add per-class ONNX NonMaxSuppression after ``output``; the new first output is ``detections``.

    ``detections`` is (K, 7): batch_index, x1, y1, x2, y2, score, class.
    """
    g = proto.graph
    consts = {
        "nms_i0": [0], "nms_i2": [2], "nms_i4": [4], "nms_i5": [5], "nms_iend": [2**62],
        "nms_col0": [0], "nms_col1": [1], "nms_col2": [2], "nms_max_out": [max_det],
    }
    for name, val in consts.items():
        g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(val)], val))
    g.initializer.append(helper.make_tensor("nms_iou", TensorProto.FLOAT, [1], [iou]))
    g.initializer.append(helper.make_tensor("nms_conf", TensorProto.FLOAT, [1], [conf]))
    g.initializer.append(helper.make_tensor("nms_half", TensorProto.FLOAT, [], [0.5]))
    n = helper.make_node
    g.node.extend([
        n("Slice", [OUTPUT, "nms_i0", "nms_i2", "nms_i2"], ["nms_cxcy"]),  # (b, N, 2)
        n("Slice", [OUTPUT, "nms_i2", "nms_i4", "nms_i2"], ["nms_wh"]),  # (b, N, 2)
        n("Slice", [OUTPUT, "nms_i4", "nms_i5", "nms_i2"], ["nms_obj"]),  # (b, N, 1)
        n("Slice", [OUTPUT, "nms_i5", "nms_iend", "nms_i2"], ["nms_cls"]),  # (b, N, nc)
        n("Mul", ["nms_wh", "nms_half"], ["nms_half_wh"]),
        n("Sub", ["nms_cxcy", "nms_half_wh"], ["nms_xy1"]),
        n("Add", ["nms_cxcy", "nms_half_wh"], ["nms_xy2"]),
        n("Concat", ["nms_xy1", "nms_xy2"], ["nms_boxes"], axis=2),  # (b, N, 4) corners
        n("Mul", ["nms_obj", "nms_cls"], ["nms_scores_bnc"]),  # (b, N, nc)
        n("Transpose", ["nms_scores_bnc"], ["nms_scores"], perm=[0, 2, 1]),  # (b, nc, N)
        n("NonMaxSuppression", ["nms_boxes", "nms_scores", "nms_max_out", "nms_iou", "nms_conf"], ["nms_sel"],
          center_point_box=0),  # (K, 3) batch, class, box
        n("Gather", ["nms_sel", "nms_col0"], ["nms_b"], axis=1),  # (K, 1)
        n("Gather", ["nms_sel", "nms_col1"], ["nms_c"], axis=1),  # (K, 1)
        n("Gather", ["nms_sel", "nms_col2"], ["nms_n"], axis=1),  # (K, 1)
        n("Concat", ["nms_b", "nms_n"], ["nms_bn"], axis=1),  # (K, 2)
        n("GatherND", ["nms_boxes", "nms_bn"], ["nms_det_boxes"]),  # (K, 4)
        n("GatherND", ["nms_scores", "nms_sel"], ["nms_det_scores"]),  # (K,)
        n("Unsqueeze", ["nms_det_scores", "nms_col1"], ["nms_det_score"]),  # (K, 1)
        n("Cast", ["nms_b"], ["nms_bf"], to=TensorProto.FLOAT),
        n("Cast", ["nms_c"], ["nms_cf"], to=TensorProto.FLOAT),
        n("Concat", ["nms_bf", "nms_det_boxes", "nms_det_score", "nms_cf"], [DETECTIONS], axis=1),  # (K, 7)
    ])
    det = helper.make_tensor_value_info(DETECTIONS, TensorProto.FLOAT, ["detections", 7])
    g.output.insert(0, det)
