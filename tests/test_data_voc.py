"""Pascal VOC (VOC2012 layout) -> COCO through the shared validation."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fcos.data.annotations import AnnotationError
from fcos.data.voc import voc_to_coco


def _xml(filename: str, size, objects) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    sz = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>{filename}</filename>{sz}{objs}</annotation>"


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOC2012"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for stem, size in (("2008_000001", (60, 40)), ("2008_000002", (50, 50)), ("2008_000003", (30, 30))):
        Image.new("RGB", size, (0, 0, 0)).save(str(root / "JPEGImages" / f"{stem}.jpg"))
    (root / "Annotations" / "2008_000001.xml").write_text(
        _xml("2008_000001.jpg", (60, 40), [("dog", (1, 1, 10, 20), 0), ("person", (5, 6, 70, 30), 1)])
    )
    (root / "Annotations" / "2008_000002.xml").write_text(
        _xml("2008_000002.jpg", (99, 99), [("cat", (11, 11, 10, 30), 0), ("cat", ("nan", 2, 3, 4), 0)])
    )
    (root / "Annotations" / "2008_000003.xml").write_text(_xml("2008_000003.jpg", None, []))
    (root / "ImageSets" / "Main" / "train.txt").write_text("2008_000001\n2008_000003\n")
    return root


def test_voc_split_is_converted_with_zero_based_boxes(voc):
    coco, report = voc_to_coco(str(voc), image_set="train")
    assert [i["file_name"] for i in coco["images"]] == ["2008_000001.jpg", "2008_000003.jpg"]
    assert len(coco["categories"]) == 20 and coco["categories"][11]["name"] == "dog"
    anns = coco["annotations"]
    assert anns[0]["bbox"] == [0, 0, 10, 20] and anns[0]["category_id"] == 12  # xmin-1, ymin-1, xmax, ymax
    assert anns[1]["bbox"] == [4, 5, 56, 25]  # person clipped at the right border (70 -> 60)
    assert report.counts["clipped (past the border)"] == 1
    assert report.counts["images without boxes (kept as background)"] == 1


def test_difficult_objects_can_be_skipped(voc):
    coco, report = voc_to_coco(str(voc), image_set="train", skip_difficult=True)
    assert len(coco["annotations"]) == 1 and report.counts["dropped (difficult)"] == 1


def test_all_xml_bad_boxes_and_size_mismatch_are_reported(voc):
    coco, report = voc_to_coco(str(voc))
    assert len(coco["images"]) == 3
    assert report.counts["dropped (x2<=x1 or y2<=y1)"] == 1
    assert report.counts["dropped (NaN/inf coordinate)"] == 1
    assert report.counts["size mismatch (XML <size> differs from the image; image size used)"] == 1
    assert coco["images"][1]["width"] == 50  # the real image size wins


def test_unknown_class_names_the_xml_file(voc):
    (voc / "Annotations" / "2008_000003.xml").write_text(_xml("2008_000003.jpg", None, [("unicorn", (1, 1, 5, 5), 0)]))
    with pytest.raises(AnnotationError) as e:
        voc_to_coco(str(voc))
    assert "2008_000003.xml" in str(e.value) and "unicorn" in str(e.value)


def test_broken_xml_and_missing_image_are_skipped(voc):
    (voc / "Annotations" / "2008_000002.xml").write_text("<annotation><filename>")
    (voc / "JPEGImages" / "2008_000003.jpg").unlink()
    coco, report = voc_to_coco(str(voc))
    assert [i["file_name"] for i in coco["images"]] == ["2008_000001.jpg"]
    assert report.counts["skipped image (invalid XML)"] == 1
    assert report.counts["skipped image (unreadable)"] == 1


def test_custom_classes_and_tool(voc, tmp_path, capsys):
    import tools.voc2coco as tool

    (tmp_path / "classes.txt").write_text("person\ndog\ncat\n")
    out = tmp_path / "voc.json"
    assert tool.main(["--voc-root", str(voc), "--classes", str(tmp_path / "classes.txt"), "--output", str(out)]) == 0
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["person", "dog", "cat"]
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2}
    assert "size mismatch" in capsys.readouterr().out
