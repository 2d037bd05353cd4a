"""The model the command-line tools use when none is given: the export written by ``make demo``."""

from __future__ import annotations

import os
from typing import Optional

# tools/demo.py writes everything under output/demo; its exported model lands in output/demo/export.
DEMO_EXPORT = os.path.join("output", "demo", "export")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def no_model_message(how_to_pass: str) -> str:
    """The error for a tool run without a model and without a demo export; ``how_to_pass`` names the flags."""
    return (
        f"no model given: {how_to_pass}. `make demo` trains a small model on synthetic shapes; its export "
        f"({DEMO_EXPORT}) is used when no model is given"
    )


def find_demo_export(cwd: Optional[str] = None) -> Optional[str]:
    """``output/demo/export`` under the current directory, else under the repository; None if neither
    holds an exported model (infer_cfg.yml)."""
    here = cwd or os.getcwd()
    if os.path.isfile(os.path.join(here, DEMO_EXPORT, "infer_cfg.yml")):
        return os.path.relpath(os.path.join(here, DEMO_EXPORT), here)
    in_repo = os.path.join(_REPO_ROOT, DEMO_EXPORT)
    return in_repo if os.path.isfile(os.path.join(in_repo, "infer_cfg.yml")) else None
