"""Deployment: fusion, ONNX export, latency benchmarks, prediction, and importing foreign weights.

Modules (imported on demand; nothing heavy happens at package import):

- ``fuse``: ``fuse_model(model)`` folds every BatchNorm into its convolution (a deep copy).
- ``onnx_export``: ``export_onnx(model, info, out, imgsz, dynamic, nms, opset, check)`` writes a
  fused, decoded ONNX file checked in ONNX Runtime against PyTorch; ``OnnxModel`` runs one.
- ``bench``: ``measure_latency`` / ``compare_latency`` / ``benchmark``, batch-1 latency in PyTorch and
  ONNX Runtime with candidates timed alternately.
- ``predict``: ``Predictor`` (letterbox, preprocess, model or ONNX file, decode, NMS, boxes back to
  original pixels); ``sources``: image, folder, video and camera readers; ``draw``: box drawing.
- ``import_yolov5``, ``import_ultralytics``, ``import_yolox``, ``darknet_io``, ``safe_unpickle``: reading
  other projects' checkpoints without executing them.
"""
