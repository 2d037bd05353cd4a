"""Deployment on Paddle Inference: ``DeployPredictor`` runs an exported model directory
(``model.json``/``model.pdmodel`` + ``model.pdiparams`` + ``infer_cfg.yml``).

Importable without the training stack: it needs Paddle's inference runtime, numpy, OpenCV, PyYAML
and the shared preprocessing in :mod:`fcos.data.preprocess`.
"""

from fcos.deploy.predictor import DeployPredictor, InferCfg, RuntimeOptions, load_infer_cfg

__all__ = ["DeployPredictor", "InferCfg", "RuntimeOptions", "load_infer_cfg"]
