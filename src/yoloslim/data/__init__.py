"""Detection data: readers (VOC, YOLO txt, COCO json, labelme, Oxford Hand), conversion, checks, class-name
matching, the synthetic data set, the loader.

Modules: ``dataset`` (``load_data``, ``DetectionDataset``, ``create_loader``), ``augment``
(``AugmentConfig`` and the augmentations), ``letterbox``, ``voc``, ``yolo``, ``coco``, ``labelme``,
``oxford_hand``, ``convert``, ``check``, ``class_map`` (a data set's classes matched to a model's),
``synth`` (+ ``shapes``), ``images`` (reading and verifying image files), ``source`` (``Sample``,
``DataSource``, ``Problem``), ``calibration`` (the images ``prune --calib`` recalibrates batch norms on).
"""
