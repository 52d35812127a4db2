"""The synthetic shapes generator: determinism, geometry, and truthfulness of the text."""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from datasets_prep.make_shapes import main, make_shapes
from datasets_prep.shapes.language import NUM
from datasets_prep.shapes.scene import CATEGORIES, COLORS, make_scene

ANN_FILES = ["annotations/instances_train2017.json", "annotations/instances_val2017.json",
             "annotations/captions_train2017.json", "annotations/captions_val2017.json",
             "karpathy/dataset_coco.json", "refcoco/instances.json",
             "llava/llava_instruct_train.json", "llava/llava_instruct_val.json"]
ID_TO_SHAPE = {c["id"]: c["name"] for c in CATEGORIES}


def _load(root: Path, rel: str):
    return json.loads((root / rel).read_text())


def _instances(root: Path) -> dict:
    a = _load(root, ANN_FILES[0])
    b = _load(root, ANN_FILES[1])
    return {"images": a["images"] + b["images"], "annotations": a["annotations"] + b["annotations"],
            "categories": a["categories"]}


def _image_path(root: Path, image: dict) -> Path:
    split = "train2017" if image["id"] < 1_000_000 else "val2017"
    return root / split / image["file_name"]


def _mask(ann, h, w):
    rles = mask_utils.frPyObjects(ann["segmentation"], h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _colour_name(pixels: np.ndarray) -> str:
    med = np.median(pixels.reshape(-1, 3), 0)
    return min(COLORS, key=lambda c: np.sum((np.asarray(COLORS[c]) - med) ** 2))


def test_layout_and_meta(shapes_root):
    for rel in [*ANN_FILES, "refcoco/refs(unc).p", "meta.json"]:
        assert (shapes_root / rel).is_file(), rel
    meta = _load(shapes_root, "meta.json")
    assert meta["args"]["seed"] == 0 and meta["counts"]["images"] == {"train": 16, "val": 8}
    assert [c["id"] for c in meta["categories"]] == [1, 2, 3, 5, 7, 9]
    assert len(list((shapes_root / "train2017").glob("*.png"))) == 16
    assert len(list((shapes_root / "val2017").glob("*.png"))) == 8
    assert not (shapes_root / ".shapes_incomplete").exists()


def test_deterministic_and_seed_dependent(shapes_root, tmp_path):
    same = make_shapes(tmp_path / "same", seed=0, train=16, val=8, workers=1, progress=False)
    other = make_shapes(tmp_path / "other", seed=1, train=16, val=8, workers=1, progress=False)
    for rel in [*ANN_FILES, "refcoco/refs(unc).p"]:
        assert (same / rel).read_bytes() == (shapes_root / rel).read_bytes(), rel
    png = "train2017/000000000003.png"
    assert (same / png).read_bytes() == (shapes_root / png).read_bytes()
    assert (other / ANN_FILES[0]).read_bytes() != (shapes_root / ANN_FILES[0]).read_bytes()
    assert (other / png).read_bytes() != (shapes_root / png).read_bytes()


def test_longer_conversations_on_the_same_images(shapes_root, tmp_path):
    """--vqa-turns N asks every question the scene allows, up to N, about the same pictures."""
    import pytest

    many = make_shapes(tmp_path / "many", seed=0, train=16, val=8, workers=1, progress=False, vqa_turns=10)
    rel = "llava/llava_instruct_train.json"

    def short_answers(root):
        return [sum(len(c["value"].split()) <= 2 for c in r["conversations"][1::2])
                for r in json.loads((root / rel).read_text())]

    few, more = short_answers(shapes_root), short_answers(many)
    assert max(few) <= 3 and max(more) <= 10 and sum(more) > 2 * sum(few)
    png = "train2017/000000000003.png"
    assert (many / png).read_bytes() == (shapes_root / png).read_bytes()
    # the usual set's extra file holds exactly those longer training conversations
    long = "llava/llava_instruct_train_long.json"
    assert (shapes_root / long).read_bytes() == (many / rel).read_bytes()
    assert not (shapes_root / "llava/llava_instruct_val_long.json").exists()
    none = make_shapes(tmp_path / "none", seed=0, train=16, val=8, workers=1, progress=False, long_turns=0)
    assert not (none / long).exists()
    for f in [rel, "llava/llava_instruct_val.json", "annotations/captions_train2017.json", "refcoco/refs(unc).p"]:
        assert (none / f).read_bytes() == (shapes_root / f).read_bytes(), f
    with pytest.raises(ValueError, match="at least 2"):
        make_shapes(tmp_path / "bad", seed=0, train=2, val=2, workers=1, progress=False, vqa_turns=1)
    with pytest.raises(ValueError, match="long_turns"):
        make_shapes(tmp_path / "bad", seed=0, train=2, val=2, workers=1, progress=False, long_turns=1)


def test_parallel_matches_serial(tmp_path):
    # 68 jobs: enough for make_shapes to actually use the process pool.
    a = make_shapes(tmp_path / "a", seed=3, train=60, val=8, workers=1, progress=False)
    b = make_shapes(tmp_path / "b", seed=3, train=60, val=8, workers=2, progress=False)
    for rel in ANN_FILES:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_skip_when_generated_and_redo_when_interrupted(shapes_root, tmp_path, capsys):
    out = make_shapes(tmp_path / "s", seed=0, train=4, val=2, workers=1, progress=False)
    stamp = (out / "meta.json").stat().st_mtime_ns
    main(["--out", str(out), "--train", "4", "--val", "2"])
    assert "already generated" in capsys.readouterr().out
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    (out / "meta.json").unlink()  # what an interrupted run leaves behind
    make_shapes(out, seed=0, train=4, val=2, workers=1, progress=False)
    assert (out / "meta.json").is_file()
    # Different arguments regenerate and remove stale images.
    make_shapes(out, seed=0, train=2, val=2, workers=1, progress=False)
    assert len(list((out / "train2017").glob("*.png"))) == 2


def test_images_and_ids(shapes_root):
    inst = _instances(shapes_root)
    ids = [im["id"] for im in inst["images"]]
    assert len(ids) == len(set(ids)) == 24
    assert min(i for i in ids if i >= 1_000_000) == 1_000_000 and 1 in ids
    for im in inst["images"]:
        assert re.fullmatch(r"\d{12}\.png", im["file_name"])
        w, h = Image.open(_image_path(shapes_root, im)).size
        assert (w, h) == (im["width"], im["height"])
        assert 96 <= w <= 320 and 96 <= h <= 320 and max(w, h) <= 2 * min(w, h)
    per_image = Counter(a["image_id"] for a in inst["annotations"])
    assert all(1 <= per_image[i] <= 8 for i in ids)


def test_annotation_geometry(shapes_root):
    inst = _instances(shapes_root)
    images = {im["id"]: im for im in inst["images"]}
    ann_ids = [a["id"] for a in inst["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))
    for a in inst["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and a["category_id"] in ID_TO_SHAPE
        assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"]
        assert w > 0 and h > 0 and a["area"] > 0
        pts = np.concatenate([np.reshape(p, (-1, 2)) for p in a["segmentation"]])
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
        assert np.allclose([pts[:, 0].min(), pts[:, 1].min()], [x, y], atol=0.011)
        assert np.allclose([pts[:, 0].max(), pts[:, 1].max()], [x + w, y + h], atol=0.011)
        # The polygon area and the rasterised mask agree with the stored area.
        assert a["area"] <= w * h + 0.01  # both rounded to 2 decimals
        m = _mask(a, im["height"], im["width"])
        assert abs(m.sum() - a["area"]) <= 0.15 * a["area"] + 10


def test_masks_match_pixels():
    # Pixels inside each visible mask (away from edges) have the object's colour, i.e.
    # the annotation is the visible part, not the full shape.
    for i in range(12):
        img, scene = make_scene(np.random.default_rng([7, 0, i]))
        arr = np.asarray(img).astype(float)
        for o in scene["objects"]:
            m = _mask(o, scene["height"], scene["width"])
            core = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
            if core.sum() < 10:
                continue
            diff = np.abs(arr[core] - np.asarray(COLORS[o["color"]])).max(1)
            assert np.mean(diff <= 20) > 0.97, (i, o["shape"], o["color"])


def test_pycocotools_loads(shapes_root):
    for rel in [*ANN_FILES[:4], "refcoco/instances.json"]:
        coco = COCO(str(shapes_root / rel))
        assert len(coco.getImgIds()) > 0


def test_captions(shapes_root):
    inst = _instances(shapes_root)
    counts = Counter(a["image_id"] for a in inst["annotations"])
    for rel in ANN_FILES[2:4]:
        caps = _load(shapes_root, rel)
        by_image: dict = {}
        for c in caps["annotations"]:
            by_image.setdefault(c["image_id"], []).append(c["caption"])
        assert set(by_image) == {im["id"] for im in caps["images"]}
        for iid, cs in by_image.items():
            assert len(cs) == 5 and len(set(cs)) >= 4
            detailed = cs[-1]
            n = counts[iid]
            assert f"with {NUM[n]} shape" in detailed, detailed
            assert len(cs[0]) < len(detailed)


def test_karpathy(shapes_root):
    k = _load(shapes_root, "karpathy/dataset_coco.json")
    assert k["dataset"] == "coco"
    splits = Counter(e["split"] for e in k["images"])
    assert splits == {"train": 16, "val": 4, "test": 4}
    sentids = [s["sentid"] for e in k["images"] for s in e["sentences"]]
    assert len(sentids) == len(set(sentids)) == 24 * 5
    for e in k["images"]:
        assert (shapes_root / e["filepath"] / e["filename"]).is_file()
        assert e["sentids"] == [s["sentid"] for s in e["sentences"]]
        assert all(s["tokens"] and s["imgid"] == e["imgid"] for s in e["sentences"])


def test_refs_point_at_unique_objects(shapes_root):
    refs = pickle.loads((shapes_root / "refcoco/refs(unc).p").read_bytes())
    inst = _load(shapes_root, "refcoco/instances.json")
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    assert {r["split"] for r in refs} == {"train", "val", "testA", "testB"}
    per_image = Counter(r["image_id"] for r in refs)
    assert all(1 <= n <= 3 for n in per_image.values())
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(sent_ids) == len(set(sent_ids))
    colour_cache: dict = {}
    checked = 0
    for r in refs:
        ann = anns[r["ann_id"]]
        assert ann["image_id"] == r["image_id"] and ann["category_id"] == r["category_id"]
        im = images[r["image_id"]]
        assert (shapes_root / im["file_name"]).is_file()  # relative to the data root
        assert 1 <= len(r["sentences"]) <= 2 and r["sent_ids"] == [s["sent_id"]
                                                                   for s in r["sentences"]]
        # Check simple "the <colour> <shape>" expressions independently, reading the
        # colours back from the pixels.
        if r["image_id"] not in colour_cache:
            arr = np.asarray(Image.open(shapes_root / im["file_name"]).convert("RGB"))
            colour_cache[r["image_id"]] = {
                a["id"]: (_colour_name(arr[_mask(a, im["height"], im["width"])]),
                          ID_TO_SHAPE[a["category_id"]])
                for a in inst["annotations"] if a["image_id"] == r["image_id"]}
        objs = colour_cache[r["image_id"]]
        for s in r["sentences"]:
            assert s["sent"] and s["tokens"] == s["sent"].split()
            m = re.fullmatch(rf"(?:the )?(?:({'|'.join(COLORS)}) )?(circle|square|triangle|"
                             r"star|hexagon|ellipse|shape)", s["raw"])
            if not m:
                continue
            colour, shape = m.groups()
            hits = [i for i, (c, sh) in objs.items()
                    if (colour is None or c == colour) and (shape == "shape" or sh == shape)]
            assert hits == [r["ann_id"]], (s["raw"], objs)
            checked += 1
    assert checked > 0


def test_llava_conversations(shapes_root):
    inst = _instances(shapes_root)
    counts = Counter(a["image_id"] for a in inst["annotations"])
    for split, n in (("train", 16), ("val", 8)):
        data = _load(shapes_root, f"llava/llava_instruct_{split}.json")
        assert len(data) == n
        for e in data:
            assert (shapes_root / e["image"]).is_file()
            conv = e["conversations"]
            assert 4 <= len(conv) <= 8
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert conv[0]["value"].startswith("<image>\n")
            assert not any("<image>" in t["value"] for t in conv[1:])
            for q, a in zip(conv[::2], conv[1::2], strict=True):
                if q["value"].endswith(("How many shapes are there?",
                                        "How many shapes are in the image?")):
                    assert a["value"] == str(counts[int(e["id"])])
