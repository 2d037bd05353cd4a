"""Every script in tools/ runs from a clone without the package installed: it puts the repository on
sys.path itself before importing fcos."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(f for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py"))

# Runs a tool with `--help` while any installed copy of fcos (editable or not) is hidden: `fcos` may only
# come from a sys.path entry that is a checkout (holds both fcos/ and tools/).
RUNNER = """
import importlib.machinery, os, runpy, sys

class CheckoutOnly:
    def find_spec(self, name, path=None, target=None):
        if name != "fcos":
            return None
        roots = [p for p in sys.path if os.path.isdir(os.path.join(p or ".", "tools"))
                 and os.path.isfile(os.path.join(p or ".", "fcos", "__init__.py"))]
        spec = importlib.machinery.PathFinder.find_spec(name, roots)
        if spec is None:
            raise ModuleNotFoundError("No module named 'fcos' (installed copies are hidden in this test)")
        return spec

sys.meta_path.insert(0, CheckoutOnly())
tool = sys.argv[1]
sys.path[0] = os.path.dirname(tool)  # as `python tools/x.py` sets it
sys.argv = [tool, "--help"]
runpy.run_path(tool, run_name="__main__")
"""


def test_all_tools_are_checked():
    assert {"demo.py", "infer.py", "make_synthetic.py", "train.py", "txt2coco.py"} <= set(TOOLS)


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_help_runs_without_the_package_installed(tool, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, os.path.join(ROOT, "tools", tool)],
        cwd=tmp_path,  # not the repository: the current directory must not provide fcos either
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
