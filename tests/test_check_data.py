"""The layout checker (datasets_prep/check.py) on the tiny shapes set, whole and broken."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datasets_prep.check import main, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def copy(shapes_root, tmp_path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(shapes_root, tmp_path / "shapes"))


def _problems(name, root, **kw) -> str:
    r = run(name, root, samples=1000, **kw)
    return "\n".join(r.problems)


def test_shapes_layout_passes(shapes_root, capsys):
    assert main(["data=shapes", f"data.root={shapes_root}"]) == 0
    out = capsys.readouterr().out
    assert "layout OK" in out and "PROBLEM" not in out
    assert "train2017: 16 images" in out and "val2017: 8 images" in out  # counts per split
    assert "refcoco (unc): " in out and "karpathy: " in out and "llava_instruct_val.json" in out
    assert main(["data=coco", f"data.root={shapes_root}"]) == 0  # the shapes are in COCO's layout too


def test_missing_file_is_named(copy):
    (copy / "annotations" / "instances_val2017.json").unlink()
    msg = _problems("coco", copy)
    assert f"missing file: {copy / 'annotations' / 'instances_val2017.json'}" in msg
    shutil.rmtree(copy / "val2017")
    assert f"missing directory: {copy / 'val2017'}" in _problems("coco", copy)


def test_corrupt_json_is_named(copy):
    (copy / "annotations" / "captions_train2017.json").write_text("{not json")
    (copy / "annotations" / "instances_val2017.json").write_text(json.dumps([1, 2, 3]))
    msg = _problems("shapes", copy)
    assert str(copy / "annotations" / "captions_train2017.json") in msg and "not valid JSON" in msg
    assert str(copy / "annotations" / "instances_val2017.json") in msg and "not COCO instances JSON" in msg


def test_missing_image_is_named(copy):
    gone = sorted((copy / "val2017").iterdir())[3]
    gone.unlink()
    msg = _problems("coco", copy)
    assert "1 of 8 sampled image files" in msg and str(gone) in msg
    broken = sorted((copy / "train2017").iterdir())[0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert "cannot be read" in _problems("coco", copy) and str(broken) in _problems("coco", copy)


def test_refer_layout(copy, tmp_path):
    """The published refer layout, built from the shapes' refcoco files."""
    refer = tmp_path / "refer"
    images = refer / "images" / "mscoco" / "images" / "train2014"
    shutil.copytree(copy / "train2017", images / "train2017")  # shapes' refs name "train2017/<file>"
    shutil.copytree(copy / "val2017", images / "val2017")
    for d in ("refcoco", "refcoco+", "refcocog"):
        shutil.copytree(copy / "refcoco", refer / d)
    (refer / "refcocog" / "refs(unc).p").rename(refer / "refcocog" / "refs(umd).p")
    msg = _problems("refcoco", refer)
    assert "lacks split(s) ['test']" in msg and "refcocog" in msg  # umd has train/val/test, not testA/B
    assert msg.count("\n") == 0  # that is the only problem; refcocog's google split is optional
    (refer / "refcoco+" / "refs(unc).p").write_bytes(b"not a pickle")
    assert "refs pickle unreadable" in _problems("refcoco", refer)
    shutil.rmtree(refer / "refcoco+")
    assert f"missing file: {refer / 'refcoco+' / 'refs(unc).p'}" in _problems("refcoco", refer)
    refs = pickle.loads((refer / "refcoco" / "refs(unc).p").read_bytes())
    refs[0]["ann_id"] = -5
    (refer / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    assert "1 refs point to annotations/images missing" in _problems("refcoco", refer)


def test_karpathy_and_llava(copy):
    split_file = copy / "karpathy" / "dataset_coco.json"
    data = json.loads(split_file.read_text())
    data["images"] = [e for e in data["images"] if e["split"] != "test"]
    split_file.write_text(json.dumps(data))
    msg = _problems("karpathy", copy)
    assert f"{split_file} lacks split(s) ['test']" in msg
    llava = copy / "llava" / "llava_instruct_val.json"
    conv = json.loads(llava.read_text())
    conv[2]["conversations"][1]["from"] = "human"
    llava.write_text(json.dumps(conv))
    msg = _problems("llava", copy, json_file=llava, image_root=copy)
    assert "1 malformed conversations" in msg and repr(conv[2]["id"]) in msg
    assert run("llava", copy).problems  # the published name and image folder are not there


def test_command_exit_codes(shapes_root, tmp_path):
    cmd = [sys.executable, "datasets_prep/check.py", "data=shapes"]
    good = subprocess.run(cmd + [f"data.root={shapes_root}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and "layout OK" in good.stdout
    bad = subprocess.run(cmd + [f"data.root={tmp_path / 'nowhere'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and str(tmp_path / "nowhere") in bad.stdout
    usage = subprocess.run(cmd + ["data.rot=x"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert usage.returncode != 0 and "data.rot" in usage.stderr
