"""tools/train.py and tools/eval.py report bad input as one `error:` line with exit code 2, no traceback."""

from __future__ import annotations

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yml")


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.fixture
def broken_dataset(tmp_path) -> str:
    """A COCO file whose only box lies outside its image, and whose image file does not exist."""
    ann = tmp_path / "train.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "missing.jpg", "width": 64, "height": 64}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 100, 5, 5], "iscrowd": 0}],
                "categories": [{"id": 1, "name": "square"}],
            }
        )
    )
    return str(ann)


def test_train_stops_on_bad_data_with_one_line(broken_dataset, tmp_path, capsys, load_tool):
    rc = load_tool("train").main(
        ["-c", CONFIG, "-o", f"data.train.ann_file={broken_dataset}", f"data.train.image_dir={tmp_path}",
         f"train.output_dir={tmp_path / 'runs'}", "data.num_workers=0"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert _error_lines(err) == [f"error: dataset check of {broken_dataset} failed:"], err
    assert "missing.jpg" in err
    assert "Traceback" not in err


def test_train_and_eval_name_missing_files(tmp_path, capsys, load_tool):
    missing = str(tmp_path / "nope.safetensors")
    rc = load_tool("train").main(
        ["-c", CONFIG, "-w", missing, "-o", "data.check_on_start=false", f"train.output_dir={tmp_path / 'runs'}",
         f"data.train.ann_file={tmp_path / 'none.json'}"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert _error_lines(err) == [f"error: annotation file not found: {tmp_path / 'none.json'}"], err
    rc = load_tool("eval").main(["-c", CONFIG, "-w", missing])
    err = capsys.readouterr().err
    assert rc == 2 and _error_lines(err) == [f"error: weights file not found: {missing}"], err
