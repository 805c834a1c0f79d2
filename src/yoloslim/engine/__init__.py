"""Training and evaluation (model files, counting and NMS live in yoloslim.models)."""
