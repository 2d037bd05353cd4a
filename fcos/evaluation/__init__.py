"""COCO evaluation: :class:`CocoEvaluator` (pycocotools), the shared loop and stand-alone evaluation."""

from fcos.evaluation.coco_eval import CocoEvaluator
from fcos.evaluation.evaluate import evaluate_weights
from fcos.evaluation.loop import run_evaluation

__all__ = ["CocoEvaluator", "evaluate_weights", "run_evaluation"]
