"""Deployment: ``DeployPredictor`` runs an exported model directory (``model.json`` (Paddle 3) or
``model.pdmodel`` (Paddle 2) + ``model.pdiparams`` + ``infer_cfg.yml``) on Paddle Inference;
``OnnxPredictor`` runs its ``model.onnx`` on ONNX Runtime with the same interface.

Importable without the training stack: it needs Paddle's inference runtime, numpy, OpenCV, PyYAML
and the shared preprocessing in :mod:`fcos.data.preprocess`.
"""

from fcos.deploy.onnx_predictor import OnnxPredictor
from fcos.deploy.predictor import DeployError, DeployPredictor, InferCfg, RuntimeOptions, load_infer_cfg

__all__ = ["DeployError", "DeployPredictor", "InferCfg", "OnnxPredictor", "RuntimeOptions", "load_infer_cfg"]
