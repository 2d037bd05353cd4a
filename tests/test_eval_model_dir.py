"""The fast engine behind eval and infer: ``tools/eval.py --model_dir`` gives the dygraph evaluation's
numbers on an export (any backend), ``tools/infer.py --engine predictor`` runs a checkpoint through a
cached export and reproduces the dygraph detections."""

from __future__ import annotations

import json
import os

import cv2
import pytest

import fcos
from fcos.data.synthetic import make_synthetic_dataset
from fcos.export import export_model, export_onnx, make_check_images
from fcos.inference.detector import Detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yml")


@pytest.fixture(scope="module")
def val_set(demo_weights, demo_category_ids, tmp_path_factory) -> dict:
    """5 synthetic val images whose ground truth is the dygraph model's own confident detections
    (score >= 0.3), so the AP is far from 0 and any engine difference shows in it."""
    paths = make_synthetic_dataset(str(tmp_path_factory.mktemp("shapes")), 0, 5, seed=4)
    det = Detector(fcos.load_config(CONFIG), weights=demo_weights)
    with open(paths["val_ann_file"], encoding="utf-8") as f:
        coco = json.load(f)
    coco["categories"] = [{"id": c, "name": n} for c, n in zip(demo_category_ids, det.class_names)]
    anns = []
    for img in coco["images"]:
        res = det.predict([cv2.imread(os.path.join(paths["val_image_dir"], img["file_name"]))])[0].filter(0.3)
        for (x1, y1, x2, y2), lab in zip(res.boxes.tolist(), res.labels.tolist()):
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": demo_category_ids[lab],
                         "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
    assert len(anns) >= 10
    coco["annotations"] = anns
    with open(paths["val_ann_file"], "w", encoding="utf-8") as f:
        json.dump(coco, f)
    return paths


@pytest.fixture(scope="module")
def exported(demo_weights, tmp_path_factory) -> str:
    cfg = fcos.load_config(CONFIG)
    det = Detector(cfg, weights=demo_weights)
    out = str(tmp_path_factory.mktemp("exp") / "demo")
    export_model(det.model, cfg, out, det.class_names, det.category_ids)
    export_onnx(out)
    return out


def _eval(load_tool, args: list[str], val_set: dict, out) -> dict:
    rc = load_tool("eval").main(
        ["-c", CONFIG, *args, "--output", str(out), "-o", f"data.val.image_dir={val_set['val_image_dir']}",
         f"data.val.ann_file={val_set['val_ann_file']}"]
    )  # fmt: skip
    assert rc == 0
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


def test_eval_model_dir_equals_dygraph_eval_on_every_backend(demo_weights, exported, val_set, load_tool, tmp_path):
    ref = _eval(load_tool, ["-w", demo_weights], val_set, tmp_path / "dygraph")
    ap = ref["bbox_mAP"]
    assert ap > 0.5  # ground truth = confident dygraph detections
    for backend in ("paddle", "onnxruntime", "openvino"):
        got = _eval(load_tool, ["--model_dir", exported, "--backend", backend], val_set, tmp_path / backend)
        got_ap = got["bbox_mAP"]
        assert abs(got_ap - ap) <= 1e-3, (backend, got_ap, ap)
        assert got["num_images"] == ref["num_images"] == 5


def test_eval_model_dir_errors(load_tool, tmp_path, capsys, val_set):
    rc = load_tool("eval").main(["-c", CONFIG, "--model_dir", str(tmp_path), "--output", str(tmp_path / "e")])
    assert rc == 2 and "infer_cfg.yml: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # -w and --model_dir together
        load_tool("eval").main(["-c", CONFIG, "-w", "x", "--model_dir", str(tmp_path)])


def test_infer_engine_predictor_matches_dygraph_and_reuses_its_cache(
    demo_weights, load_tool, tmp_path, capsys, monkeypatch
):
    """dygraph, then the predictor twice (export, then cache), then the predictor with --backend auto
    (model.onnx added to the cached export, the fastest engine picked): all give dygraph's detections."""
    monkeypatch.setenv("FCOS_CACHE_DIR", str(tmp_path / "cache"))
    images = tmp_path / "imgs"
    images.mkdir()
    for i, img in enumerate(make_check_images(seed=2)):
        cv2.imwrite(str(images / f"{i}.png"), img)
    runs = []
    for engine, extra in (("dygraph", []), ("predictor", []), ("predictor", []), ("predictor", ["--backend", "auto"])):
        js = tmp_path / f"{len(runs)}.json"
        rc = load_tool("infer").main(
            ["-c", CONFIG, "-w", demo_weights, "--source", str(images), "--engine", engine, "--no-save",
             "--save-json", str(js), "--quiet", "--threads", "1", *extra]
        )  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0, out
        with open(js, encoding="utf-8") as f:
            runs.append((json.load(f), out))
    (dy, _), (first, out1), (second, out2), (auto, out3) = runs
    assert "engine: predictor, exported to" in out1 and "Paddle Inference" in out1
    assert "engine: predictor, cached export" in out2 and "engine: predictor, cached export" in out3
    assert "note: backend auto -> " in out3 and "measured now" in out3
    (export_dir,) = [
        os.path.join(tmp_path / "cache" / "exports", d) for d in os.listdir(tmp_path / "cache" / "exports")
    ]
    assert os.path.isfile(os.path.join(export_dir, "model.onnx"))
    assert not [f for f in os.listdir(export_dir) if f.startswith(".")]  # no temporary leftovers
    assert first == second
    key = lambda r: (r["file_name"], r["category_id"], round(r["score"], 2))  # noqa: E731
    strong = lambda rs: sorted(key(r) for r in rs if r["score"] >= 0.3)  # noqa: E731
    assert len(strong(dy)) >= 5 and strong(dy) == strong(first) == strong(auto)


def test_infer_backend_needs_the_predictor_engine(demo_weights, load_tool, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), make_check_images(seed=1)[0])
    rc = load_tool("infer").main(
        ["-c", CONFIG, "-w", demo_weights, "--source", str(tmp_path), "--backend", "auto", "--no-save"]
    )
    assert rc == 2 and "--backend needs --engine predictor" in capsys.readouterr().err
