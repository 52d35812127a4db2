"""Readers of the published data formats (run on the tiny generated shapes set)."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from visionllm.data.captions import CocoCaptions, KarpathyCaptions
from visionllm.data.coco import CocoDetection
from visionllm.data.io import load_image
from visionllm.data.llava import LlavaInstruct
from visionllm.data.refcoco import RefCocoGrounding, merged_grounding

IMAGE_KEYS = {"image", "image_id", "file_name", "width", "height"}


def _check_image(s):
    assert isinstance(s["image"], Image.Image) and s["image"].mode == "RGB"
    assert s["image"].size == (s["width"], s["height"])
    assert isinstance(s["width"], int) and isinstance(s["height"], int)
    assert isinstance(s["file_name"], str)


# ------------------------------------------------------------------------ image loading


def test_load_image_modes(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((5, 7), 100, np.uint8), "L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (7, 5), (10, 20, 30, 0)).save(rgba)
    pal = tmp_path / "pal.png"
    p_img = Image.new("P", (7, 5), 1)
    p_img.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    p_img.save(pal)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((5, 7), 65535, np.uint16)).save(deep)
    for p in (gray, rgba, pal, deep):
        img = load_image(p)
        assert img.mode == "RGB" and img.size == (7, 5), p
    assert load_image(gray).getpixel((0, 0)) == (100, 100, 100)
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert load_image(pal).getpixel((0, 0)) == (200, 0, 0)
    assert load_image(deep).getpixel((0, 0)) == (255, 255, 255)  # rescaled, not clipped


def test_load_image_exif_orientation(tmp_path):
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (40, 20), (0, 0, 255)).save(p, exif=exif)
    assert load_image(p).size == (20, 40)


def test_load_image_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        load_image(bad)
    trunc = tmp_path / "trunc.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"trunc\.png"):
        load_image(trunc)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_image(tmp_path / "missing.png")


# --------------------------------------------------------------------------------- COCO


def test_coco_detection(shapes_root):
    ds = CocoDetection(image_dir=shapes_root / "val2017",
                       ann_file=shapes_root / "annotations/instances_val2017.json")
    assert len(ds) == 8 and isinstance(ds.coco, COCO)
    assert ds.categories == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
                             {"id": 3, "name": "triangle"}, {"id": 5, "name": "star"},
                             {"id": 7, "name": "hexagon"}, {"id": 9, "name": "ellipse"}]
    s = ds[0]
    assert set(s) == IMAGE_KEYS | {"objects"}
    _check_image(s)
    assert s["image_id"] == 1_000_000 and s["file_name"] == "000001000000.png"
    assert s["objects"]
    for o in s["objects"]:
        assert set(o) == {"bbox", "category_id", "category_name", "supercategory", "attributes",
                          "segmentation", "area", "iscrowd"}
        assert o["supercategory"] == "shape" and len(o["attributes"]) == 1
        x, y, w, h = o["bbox"]
        assert w >= 1 and h >= 1 and x + w <= s["width"] and y + h <= s["height"]
        assert o["category_name"] in {c["name"] for c in ds.categories}
        assert isinstance(o["segmentation"], list) and o["iscrowd"] == 0
    assert ds.attribute_names == ["blue", "green", "orange", "purple", "red", "yellow"]


def _write_coco(tmp_path, images, anns):
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for im in images:
        Image.new("L", (im["width"], im["height"]), 50).save(tmp_path / "imgs" / im["file_name"])
    f = tmp_path / "ann.json"
    f.write_text(json.dumps({"images": images, "annotations": anns,
                             "categories": [{"id": 4, "name": "thing"}]}))
    return f


def test_coco_crowd_degenerate_and_empty_images(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 20, "height": 10},
              {"id": 2, "file_name": "b.png", "width": 20, "height": 10}]
    anns = [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5], "area": 25,
             "iscrowd": 0, "segmentation": [[1, 1, 6, 1, 6, 6]]},
            {"id": 2, "image_id": 1, "category_id": 4, "bbox": [2, 2, 8, 4], "area": 32,
             "iscrowd": 1, "segmentation": {"counts": [0, 200], "size": [10, 20]}},
            {"id": 3, "image_id": 1, "category_id": 4, "bbox": [2, 2, 0.5, 4], "area": 2,
             "iscrowd": 0, "segmentation": [[2, 2, 2.5, 2, 2.5, 6]]}]
    f = _write_coco(tmp_path, images, anns)
    ds = CocoDetection(image_dir=tmp_path / "imgs", ann_file=f)
    assert len(ds) == 2  # image 2 has no annotations but stays
    assert [o["bbox"] for o in ds[0]["objects"]] == [[1.0, 1.0, 5.0, 5.0]]
    assert ds[1]["objects"] == [] and ds[1]["image"].mode == "RGB"
    crowd = CocoDetection(image_dir=tmp_path / "imgs", ann_file=f, include_crowd=True)
    assert [o["iscrowd"] for o in crowd[0]["objects"]] == [0, 1]


def test_coco_errors(tmp_path, shapes_root):
    imgs = shapes_root / "val2017"
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        CocoDetection(image_dir=imgs, ann_file=tmp_path / "nope.json")
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        CocoDetection(image_dir=imgs, ann_file=empty)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"id": "x", "conversations": []}]))
    with pytest.raises(ValueError, match="not COCO"):
        CocoDetection(image_dir=imgs, ann_file=other)
    with pytest.raises(FileNotFoundError, match="image directory"):
        CocoDetection(image_dir=tmp_path / "noimgs",
                      ann_file=shapes_root / "annotations/instances_val2017.json")


def test_coco_corrupt_and_missing_image(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 20, "height": 10},
              {"id": 2, "file_name": "b.png", "width": 20, "height": 10}]
    f = _write_coco(tmp_path, images, [])
    (tmp_path / "imgs" / "a.png").write_bytes(b"garbage")
    (tmp_path / "imgs" / "b.png").unlink()
    ds = CocoDetection(image_dir=tmp_path / "imgs", ann_file=f)
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png"):
        ds[0]
    with pytest.raises(FileNotFoundError, match=r"b\.png"):
        ds[1]


# ----------------------------------------------------------------------------- RefCOCO

REF_KEYS = IMAGE_KEYS | {"expression", "bbox", "ref_id", "sent_id", "split", "category_id", "object_name"}


def test_refcoco_grounding(shapes_root):
    train = RefCocoGrounding(root=shapes_root, splits=("train",), image_root=shapes_root)
    refs = pickle.loads((shapes_root / "refcoco/refs(unc).p").read_bytes())
    n_sent = sum(len(r["sentences"]) for r in refs if r["split"] == "train")
    assert len(train) == n_sent > 0
    anns = {a["id"]: a for a in json.loads((shapes_root / "refcoco/instances.json")
                                           .read_text())["annotations"]}
    by_ref = {r["ref_id"]: r for r in refs}
    for i in (0, len(train) - 1):
        s = train[i]
        assert set(s) == REF_KEYS
        _check_image(s)
        assert s["split"] == "train" and isinstance(s["expression"], str) and s["expression"]
        assert s["bbox"] == anns[by_ref[s["ref_id"]]["ann_id"]]["bbox"]
        # the referred object in words: its colour attribute, then its category
        assert s["object_name"].split() == [*anns[by_ref[s["ref_id"]]["ann_id"]]["attributes"], s["object_name"].split()[-1]]
        assert s["file_name"].startswith("train2017/")
    evals = RefCocoGrounding(root=shapes_root, splits=("val", "testA", "testB"),
                             image_root=shapes_root)
    assert {evals.samples[i]["split"] for i in range(len(evals))} == {"val", "testA", "testB"}
    assert evals[0]["file_name"].startswith("val2017/")
    single = RefCocoGrounding(root=shapes_root, splits="testA", image_root=shapes_root)
    assert 0 < len(single) < len(evals)


def test_refcoco_errors_and_merge(shapes_root, tmp_path):
    with pytest.raises(ValueError, match="available"):
        RefCocoGrounding(root=shapes_root, splits=("test",), image_root=shapes_root)
    with pytest.raises(FileNotFoundError, match=r"refs\(umd\)\.p"):
        RefCocoGrounding(root=shapes_root, split_by="umd", image_root=shapes_root)
    # A second data set in the same layout, as refcoco+ sits next to refcoco.
    shutil.copytree(shapes_root / "refcoco", tmp_path / "refcoco")
    shutil.copytree(shapes_root / "refcoco", tmp_path / "refcoco+")
    merged = merged_grounding(tmp_path, [("refcoco", "unc"), ("refcoco+", "unc")],
                              splits=("train",), image_root=shapes_root)
    single = RefCocoGrounding(root=tmp_path, splits=("train",), image_root=shapes_root)
    assert len(merged) == 2 * len(single)
    assert set(merged[len(merged) - 1]) == REF_KEYS
    # The default image root follows the refer repository layout.
    default = RefCocoGrounding(root=tmp_path, splits=("train",))
    assert default.image_root == tmp_path / "images/mscoco/images/train2014"
    with pytest.raises(FileNotFoundError, match="train2014"):
        default[0]
    bad = tmp_path / "refcoco" / "refs(unc).p"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="refs pickle"):
        RefCocoGrounding(root=tmp_path, image_root=shapes_root)


# ---------------------------------------------------------------------------- captions


def test_coco_captions(shapes_root):
    ds = CocoCaptions(image_dir=shapes_root / "train2017",
                      ann_file=shapes_root / "annotations/captions_train2017.json")
    assert len(ds) == 16
    s = ds[3]
    assert set(s) == IMAGE_KEYS | {"captions"}
    _check_image(s)
    assert len(s["captions"]) == 5 and all(isinstance(c, str) and c for c in s["captions"])
    with pytest.raises(ValueError, match="captions"):
        CocoCaptions(image_dir=shapes_root / "train2017",
                     ann_file=shapes_root / "annotations/instances_train2017.json")


def test_karpathy_captions(shapes_root, tmp_path):
    split_file = shapes_root / "karpathy/dataset_coco.json"
    sizes = {sp: len(KarpathyCaptions(root=shapes_root, split_file=split_file, split=sp))
             for sp in ("train", "val", "test")}
    assert sizes == {"train": 16, "val": 4, "test": 4}
    s = KarpathyCaptions(root=shapes_root, split_file=split_file, split="test")[0]
    assert set(s) == IMAGE_KEYS | {"captions"}
    _check_image(s)
    assert s["file_name"].startswith("val2017/") and s["image_id"] >= 1_000_000
    assert len(s["captions"]) == 5
    # restval is only added to train on request (the published split has 30k of them).
    data = json.loads(split_file.read_text())
    data["images"][0]["split"] = "restval"
    f = tmp_path / "dataset_coco.json"
    f.write_text(json.dumps(data))
    assert len(KarpathyCaptions(root=shapes_root, split_file=f, split="train")) == 15
    assert len(KarpathyCaptions(root=shapes_root, split_file=f, split="train",
                                include_restval=True)) == 16
    with pytest.raises(ValueError, match="split"):
        KarpathyCaptions(root=shapes_root, split_file=split_file, split="dev")
    with pytest.raises(FileNotFoundError, match="dataset_coco"):
        KarpathyCaptions(root=shapes_root, split_file=tmp_path / "x" / "dataset_coco.json")


# ------------------------------------------------------------------------------- LLaVA


def test_llava_instruct(shapes_root):
    ds = LlavaInstruct(json_file=shapes_root / "llava/llava_instruct_val.json",
                       image_root=shapes_root)
    assert len(ds) == 8
    s = ds[0]
    assert set(s) == IMAGE_KEYS | {"conversations"}
    _check_image(s)
    assert s["image_id"] == "000001000000" and s["file_name"] == "val2017/000001000000.png"
    assert s["conversations"][0]["from"] == "human"
    assert s["conversations"][0]["value"].startswith("<image>")


@pytest.mark.parametrize("conv, message", [
    ([{"from": "human", "value": "How many?"}, {"from": "gpt", "value": "2"}], "<image>"),
    ([{"from": "human", "value": "<image>\nHi"}, {"from": "human", "value": "?"}], "alternate"),
    ([{"from": "gpt", "value": "<image>"}, {"from": "human", "value": "?"}], "alternate"),
    ([{"from": "human", "value": "<image>\nHi"}], "ends with a human turn"),
    ([], "non-empty"),
])
def test_llava_validation(tmp_path, shapes_root, conv, message):
    f = tmp_path / "bad.json"
    good = {"id": "ok", "image": "val2017/000001000000.png",
            "conversations": [{"from": "human", "value": "<image>\nQ"},
                              {"from": "gpt", "value": "A"}]}
    f.write_text(json.dumps([good, {"id": "broken-7", "image": "x.png", "conversations": conv}]))
    with pytest.raises(ValueError, match="broken-7") as e:
        LlavaInstruct(json_file=f, image_root=shapes_root)
    assert message in str(e.value)


def test_llava_skips_text_only(tmp_path, shapes_root):
    f = tmp_path / "mix.json"
    f.write_text(json.dumps([{"id": "t", "conversations": [{"from": "human", "value": "hi"},
                                                           {"from": "gpt", "value": "yo"}]}]))
    ds = LlavaInstruct(json_file=f, image_root=shapes_root)
    assert len(ds) == 0 and ds.num_text_only == 1
    f.write_text("{}")
    with pytest.raises(ValueError, match="not LLaVA"):
        LlavaInstruct(json_file=f, image_root=shapes_root)
