"""PaddleDetection's own test-time pipeline on image files, for ``ppdet_worker.py`` (runs in ``.venv-ppdet``).

* ``detect_files(ctx, name, paths, config)``: each file through the config's ``TestReader`` (its
  ``sample_transforms`` with ``ppdet.data.reader.Compose``: Decode from ``im_file`` -> Resize -> NormalizeImage ->
  Permute; its ``batch_transforms`` with ``BatchCompose``: PadBatch) and the model built earlier under ``name``
  (``ppdet_tasks.build_fcos``); returns per file ``bbox_<i>`` (M, 6: class, score, x1, y1, x2, y2 in the
  original image, as PaddleDetection post-processes them), ``im_shape_<i>`` and ``scale_factor_<i>``.
"""

from __future__ import annotations

import os

import numpy as np
from ppdet_tasks import FCOS_R50_MS_2X, PPDET_SRC, _model


def detect_files(ctx: dict, name: str, paths: list, config: str = FCOS_R50_MS_2X) -> dict:
    import paddle
    from ppdet.core.workspace import load_config
    from ppdet.data.reader import BatchCompose, Compose

    cfg = load_config(config if os.path.isabs(config) else os.path.join(PPDET_SRC, config))
    reader = cfg["TestReader"]
    samples = Compose(reader["sample_transforms"], num_classes=cfg.num_classes)
    batches = BatchCompose(reader.get("batch_transforms", []), num_classes=cfg.num_classes)
    model = _model(ctx, name)
    out: dict = {}
    for i, path in enumerate(paths):
        sample = samples({"im_file": str(path), "im_id": np.array([i])})
        batch = batches([sample])
        inputs = {k: paddle.to_tensor(np.asarray(batch[k])) for k in ("image", "im_shape", "scale_factor")}
        with paddle.no_grad():
            pred = model(inputs)
        out[f"bbox_{i}"] = pred["bbox"].numpy()
        out[f"im_shape_{i}"] = np.asarray(batch["im_shape"])
        out[f"scale_factor_{i}"] = np.asarray(batch["scale_factor"])
    return out
