"""The txt annotation format -> COCO: every recoverable problem is reported, never fatal; a class id
outside the names file is an error naming file, line and id."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fcos.data.annotations import AnnotationError
from fcos.data.txt_format import txt_to_coco


@pytest.fixture
def ds(tmp_path):
    for name, size in (("a.jpg", (100, 80)), ("b.jpg", (50, 40)), ("c d.png", (30, 20))):
        Image.new("RGB", size, (128, 128, 128)).save(str(tmp_path / name))
    (tmp_path / "classes.txt").write_bytes(b"cat\r\ndog\r\n\r\nbird\r\n")
    return tmp_path


def _convert(ds, text: str, newline: bytes = b"\n"):
    (ds / "ann.txt").write_bytes(text.replace("\n", newline.decode()).encode("utf-8"))
    return txt_to_coco(str(ds / "ann.txt"), str(ds), str(ds / "classes.txt"))


def _boxes(coco, file_name):
    iid = next(i["id"] for i in coco["images"] if i["file_name"] == file_name)
    return [(a["bbox"], a["category_id"]) for a in coco["annotations"] if a["image_id"] == iid]


def test_clean_file_round_trip(ds):
    coco, report = _convert(ds, "a.jpg 10,20,30,60,0 5,5,15,25,2\nb.jpg 0,0,50,40,1\n")
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird"]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert coco["images"][0] == {"id": 1, "file_name": "a.jpg", "height": 80, "width": 100}
    assert _boxes(coco, "a.jpg") == [([10, 20, 20, 40], 1), ([5, 5, 10, 20], 3)]
    assert _boxes(coco, "b.jpg") == [([0, 0, 50, 40], 2)]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3]
    assert report.num_images == 2 and report.num_boxes == 3 and not report.counts


def test_crlf_stray_spaces_tabs_and_file_names_with_spaces(ds):
    text = "  a.jpg \t 10, 20 ,30,60,0    5,5,15,25,2  \n\n# a comment\nc d.png 1,1,5,5,1\n"
    coco, report = _convert(ds, text, newline=b"\r\n")
    assert _boxes(coco, "a.jpg") == [([10, 20, 20, 40], 1), ([5, 5, 10, 20], 3)]
    assert _boxes(coco, "c d.png") == [([1, 1, 4, 4], 2)]
    assert not report.counts


def test_line_without_boxes_is_a_background_image(ds):
    coco, report = _convert(ds, "a.jpg\nb.jpg 1,1,5,5,0\n")
    assert [i["file_name"] for i in coco["images"]] == ["a.jpg", "b.jpg"]
    assert _boxes(coco, "a.jpg") == []
    assert report.counts["images without boxes (kept as background)"] == 1


def test_nan_degenerate_and_outside_boxes_are_dropped_and_counted(ds):
    text = "a.jpg nan,1,5,5,0 1,1,inf,5,0 10,10,10,20,0 30,30,20,40,1 200,10,300,20,0 1,1,5,5,0\n"
    coco, report = _convert(ds, text)
    assert _boxes(coco, "a.jpg") == [([1, 1, 4, 4], 1)]
    assert report.counts["dropped (NaN/inf coordinate)"] == 2
    assert report.counts["dropped (x2<=x1 or y2<=y1)"] == 2
    assert report.counts["dropped (outside the image)"] == 1
    assert "ann.txt:1" in report.summary()


def test_boxes_past_the_border_are_clipped(ds):
    coco, report = _convert(ds, "a.jpg -5,-3,120,50,0 90,70,100.3,80.2,1\n")
    assert _boxes(coco, "a.jpg") == [([0, 0, 100, 50], 1), ([90, 70, 10, 10], 2)]
    assert report.counts["clipped (past the border)"] == 1  # the second is within the 0.5 px tolerance


def test_duplicates_are_merged(ds):
    coco, report = _convert(ds, "a.jpg 1,1,5,5,0 1,1,5,5,0 1,1,5,5,1\nb.jpg 1,1,4,4,0\na.jpg 2,2,6,6,0\n")
    assert _boxes(coco, "a.jpg") == [([1, 1, 4, 4], 1), ([1, 1, 4, 4], 2), ([2, 2, 4, 4], 1)]
    assert report.counts["merged (duplicate box)"] == 1
    assert report.counts["merged (image listed twice)"] == 1
    assert [i["file_name"] for i in coco["images"]] == ["a.jpg", "b.jpg"]


def test_unparseable_tokens_and_missing_images_are_reported(ds):
    coco, report = _convert(ds, "a.jpg 1,2,3 x,1,5,5,0 1,1,5,5,0\nmissing.jpg 1,1,5,5,0\n")
    assert _boxes(coco, "a.jpg") == [([1, 1, 4, 4], 1)]
    assert report.counts["dropped (unparseable box token)"] == 2
    assert report.counts["skipped image (unreadable)"] == 1
    assert "missing.jpg" in report.summary()


@pytest.mark.parametrize("cls", ["3", "-1", "7"])
def test_class_id_out_of_range_names_file_line_and_id(ds, cls):
    with pytest.raises(AnnotationError) as e:
        _convert(ds, f"a.jpg 1,1,5,5,0\nb.jpg 1,1,5,5,{cls}\n")
    msg = str(e.value)
    assert "ann.txt:2" in msg and f"class id {cls}" in msg and "classes.txt" in msg


def test_empty_annotation_file_gives_an_empty_dataset(ds):
    coco, report = _convert(ds, "")
    assert coco["images"] == [] and coco["annotations"] == [] and len(coco["categories"]) == 3
    assert report.num_images == 0


def test_tool_writes_json_and_report(ds, capsys):
    import tools.txt2coco as tool

    (ds / "ann.txt").write_text("a.jpg 1,1,5,5,0 nan,1,2,2,1\n")
    out = ds / "out" / "train.json"
    rc = tool.main(
        [
            "--ann",
            str(ds / "ann.txt"),
            "--image-dir",
            str(ds),
            "--classes",
            str(ds / "classes.txt"),
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    coco = json.loads(out.read_text())
    assert len(coco["annotations"]) == 1
    printed = capsys.readouterr().out
    assert "dropped (NaN/inf coordinate): 1" in printed
    assert json.loads((ds / "out" / "train.report.json").read_text())["counts"] == {"dropped (NaN/inf coordinate)": 1}
    (ds / "ann.txt").write_text("a.jpg 1,1,5,5,9\n")
    assert (
        tool.main(
            [
                "--ann",
                str(ds / "ann.txt"),
                "--image-dir",
                str(ds),
                "--classes",
                str(ds / "classes.txt"),
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert "class id 9" in capsys.readouterr().err


def test_converted_boxes_load_back_identically(ds):
    """txt -> COCO -> dataset record: the same pixel boxes and labels come back."""
    from fcos.data.coco import CocoDetection

    coco, _ = _convert(ds, "a.jpg 10.5,20,30,60,0 5,5,15,25,2\n")
    (ds / "ann.json").write_text(json.dumps(coco))
    rec = CocoDetection(str(ds), str(ds / "ann.json")).get_record(0)
    np.testing.assert_allclose(rec["boxes"], [[10.5, 20, 30, 60], [5, 5, 15, 25]])
    assert rec["labels"].tolist() == [0, 2]
