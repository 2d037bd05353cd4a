"""check_dataset: one problem of each kind, each reported by name; report JSON and plot written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from fcos.data.checks import CLASS_PLOT, REPORT_JSON, check_dataset
from fcos.data.synthetic import make_synthetic_dataset


@pytest.fixture
def bad(tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    for name, size in (("ok.jpg", (40, 30)), ("small.jpg", (20, 10)), ("dup_a.jpg", (10, 10))):
        Image.new("RGB", size).save(str(img_dir / name))
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(str(img_dir / "noisy.jpg"))
    good = (img_dir / "noisy.jpg").read_bytes()  # cut in the pixel data, the header stays intact
    (img_dir / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (img_dir / "empty.jpg").write_bytes(b"")
    images = [
        {"id": 1, "file_name": "ok.jpg", "height": 30, "width": 40},
        {"id": 2, "file_name": "small.jpg", "height": 99, "width": 20},  # size mismatch
        {"id": 3, "file_name": "missing.jpg", "height": 5, "width": 5},
        {"id": 4, "file_name": "trunc.jpg", "height": 30, "width": 40},
        {"id": 5, "file_name": "empty.jpg", "height": 30, "width": 40},
        {"id": 5, "file_name": "dup_a.jpg", "height": 10, "width": 10},  # duplicate id
        {"id": 6, "file_name": "ok.jpg", "height": 30, "width": 40},  # duplicate file name
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 10, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 10, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # duplicate box
        {"id": 3, "image_id": 1, "category_id": 30, "bbox": [1, 1, 0, 5], "iscrowd": 0},  # degenerate
        {"id": 4, "image_id": 1, "category_id": 30, "bbox": [30, 20, 20, 5], "iscrowd": 0},  # past the border
        {"id": 5, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # unknown category
        {"id": 6, "image_id": 77, "category_id": 10, "bbox": [1, 1, 5, 5], "iscrowd": 0},  # unknown image
        {"id": 0, "image_id": 1, "category_id": 30, "bbox": [2, 2, 5, 5], "iscrowd": 0},  # id 0
        {"id": 7, "image_id": 1, "category_id": 30, "bbox": [None, 2, 5, 5], "iscrowd": 0},  # NaN-like
        {"id": 8, "image_id": 1, "category_id": 10, "bbox": [0, 0, 40, 30], "iscrowd": 1},  # crowd
        {"id": 9, "image_id": 1, "category_id": 30, "bbox": [100, 100, 5, 5], "iscrowd": 0},  # outside
    ]
    cats = [{"id": 10, "name": "cat"}, {"id": 30, "name": "dog"}, {"id": 20, "name": "emu"}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(ann), str(img_dir)


def _has(msgs, *parts):
    return any(all(p in m for p in parts) for m in msgs)


def test_every_problem_is_reported_by_name(bad, tmp_path):
    ann, img_dir = bad
    r = check_dataset(ann, img_dir, out_dir=str(tmp_path / "out"), num_threads=2)
    assert not r.ok
    assert _has(r.errors, "missing image", "missing.jpg")
    assert _has(r.errors, "truncated image", "trunc.jpg")
    assert _has(r.errors, "unreadable image", "empty.jpg", "empty")
    assert _has(r.errors, "duplicate image id", "id 5", "dup_a.jpg")
    assert _has(r.errors, "unknown category id", "annotation id 5", "99")
    assert _has(r.errors, "unknown image id", "annotation id 6", "77")
    assert _has(r.warnings, "size mismatch", "small.jpg", "JSON 20x99", "file 20x10")
    assert _has(r.warnings, "duplicate file name", "ok.jpg")
    assert _has(r.warnings, "duplicate box", "annotation id 2")
    assert _has(r.warnings, "degenerate box (width or height <= 0)", "annotation id 3")
    assert _has(r.warnings, "degenerate box (NaN/inf)", "annotation id 7") or _has(
        r.warnings, "malformed bbox", "annotation id 7"
    )
    assert _has(r.warnings, "box past the border", "annotation id 4")
    assert _has(r.warnings, "box outside the image", "annotation id 9")
    assert _has(r.warnings, "annotation id 0")
    assert _has(r.warnings, "class without instances", "emu")
    # counts
    assert r.num_images == 6 and r.num_readable_images == 3  # ok.jpg (twice) and small.jpg
    assert r.num_crowd == 1
    assert r.class_names == ["cat", "emu", "dog"]  # category-id order: 10, 20, 30
    assert r.instances_per_class == {"cat": 1, "emu": 0, "dog": 2}  # ann 1; anns 4 and 0
    assert r.images_per_class == {"cat": 1, "emu": 0, "dog": 1}
    assert r.images_without_boxes == 5
    # outputs
    data = json.loads(open(os.path.join(tmp_path / "out", REPORT_JSON), encoding="utf-8").read())
    assert data["ok"] is False and data["errors"] == r.errors
    assert [c["category_id"] for c in data["classes"]] == [10, 20, 30]
    with open(os.path.join(tmp_path / "out", CLASS_PLOT), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    text = r.summary()
    assert "FAILED" in text and "missing.jpg" in text


def test_headers_only_misses_truncation_but_finds_the_rest(bad):
    ann, img_dir = bad
    r = check_dataset(ann, img_dir, verify_pixels=False, num_threads=1)
    assert not _has(r.errors, "trunc.jpg")
    assert _has(r.errors, "missing image", "missing.jpg")


def test_exif_rotated_size_mismatch_gets_a_hint(tmp_path):
    img = Image.new("RGB", (20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(str(tmp_path / "r.jpg"), exif=exif)
    ann = tmp_path / "a.json"
    images = [{"id": 1, "file_name": "r.jpg", "height": 30, "width": 20}]  # the stored (unrotated) size
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    r = check_dataset(str(ann), str(tmp_path))
    assert _has(r.warnings, "size mismatch", "r.jpg", "EXIF")


def test_invalid_or_missing_json_is_an_error_not_a_crash(tmp_path):
    r = check_dataset(str(tmp_path / "none.json"), str(tmp_path))
    assert not r.ok and _has(r.errors, "annotation file missing")
    (tmp_path / "broken.json").write_text("{not json")
    r = check_dataset(str(tmp_path / "broken.json"), str(tmp_path), out_dir=str(tmp_path / "o"))
    assert not r.ok and _has(r.errors, "invalid JSON", "broken.json")
    assert os.path.isfile(tmp_path / "o" / REPORT_JSON)


def test_clean_synthetic_dataset_passes_and_tool_exit_codes(tmp_path, capsys):
    import tools.check_dataset as tool

    p = make_synthetic_dataset(str(tmp_path / "d"), 12, 4, seed=0)
    r = check_dataset(p["train_ann_file"], p["train_image_dir"])
    assert r.ok and r.errors == [] and r.warnings == []
    assert r.num_images == 12 and r.num_boxes == sum(r.instances_per_class.values()) > 0
    out = str(tmp_path / "check")
    assert tool.main(["--ann", p["train_ann_file"], "--image-dir", p["train_image_dir"], "--output", out]) == 0
    assert os.path.isfile(os.path.join(out, REPORT_JSON)) and os.path.isfile(os.path.join(out, CLASS_PLOT))
    assert "OK" in capsys.readouterr().out
    os.remove(os.path.join(p["val_image_dir"], "000002.jpg"))
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(
        "model: {num_classes: 4}\n"
        f"data:\n  train: {{image_dir: {p['train_image_dir']}, ann_file: {p['train_ann_file']}}}\n"
        f"  val: {{image_dir: {p['val_image_dir']}, ann_file: {p['val_ann_file']}}}\n"
    )
    assert tool.main(["-c", str(cfg), "--output", out]) == 1
    printed = capsys.readouterr().out
    assert "000002.jpg" in printed and os.path.isfile(os.path.join(out, "val", REPORT_JSON))


def test_tool_writes_its_report_under_output_not_next_to_the_data(tmp_path, monkeypatch):
    import tools.check_dataset as tool

    p = make_synthetic_dataset(str(tmp_path / "d"), 4, 2, seed=0)
    before = sorted(os.listdir(os.path.dirname(p["train_ann_file"])))
    monkeypatch.chdir(tmp_path)
    assert tool.main(["--ann", p["train_ann_file"], "--image-dir", p["train_image_dir"], "--headers-only"]) == 0
    stem = os.path.splitext(os.path.basename(p["train_ann_file"]))[0]
    assert os.path.isfile(tmp_path / "output" / "dataset_check" / stem / REPORT_JSON)
    assert sorted(os.listdir(os.path.dirname(p["train_ann_file"]))) == before
