"""Detection data: readers (VOC, YOLO txt), conversion, checks, the synthetic data set, the loader.

Modules: ``dataset`` (``load_data``, ``DetectionDataset``, ``create_loader``), ``augment``
(``AugmentConfig`` and the augmentations), ``letterbox``, ``voc``, ``yolo``, ``convert``, ``check``,
``synth`` (+ ``shapes``), ``images`` (reading and verifying image files), ``source`` (``Sample``,
``DataSource``, ``Problem``), ``calibration`` (the images ``prune --calib`` recalibrates batch norms on).
"""
