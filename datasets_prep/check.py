"""Check that a data set is laid out as published, where the readers of ``visionllm.data``
expect it (METHOD.md §8; layouts and download notes: datasets_prep/README.md)::

    python datasets_prep/check.py data=NAME data.root=DIR [samples=200] [seed=0]
        [split_file=FILE] [json=FILE] [image_root=DIR]

NAME is one of shapes, coco, refcoco, karpathy, llava. Every problem is printed with the full
path it concerns: missing files and directories, JSON that is not the expected format, a
refs pickle that cannot be read, missing splits, and image files the annotations name but
that are absent or unreadable (checked on a random sample of ``samples`` per file: a full
pass over COCO's 118k images is a job for the training run, not for a layout check). Exits 1
when there is a problem, 0 with a summary of counts per split when there is none.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from visionllm.data.coco import load_coco
from visionllm.data.io import read_json
from visionllm.data.llava import validate_conversation
from visionllm.data.refcoco import load_refs

NAMES = ("shapes", "coco", "refcoco", "karpathy", "llava")
COCO_SPLITS = ("train2017", "val2017")
# (dataset, split_by) -> the splits the published refs file holds; required ones train the paper's mix
REFER = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}
REFER_REQUIRED = (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd"))
KARPATHY_SPLITS = ("train", "val", "test")  # + "restval" in the published file


class Report:
    """Collects problems (the layout is unusable), warnings and the summary lines."""

    def __init__(self):
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.lines: list[str] = []

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def ok(self, msg: str) -> None:
        self.lines.append(msg)

    def need(self, path: Path, what: str, *, is_dir: bool = False, required: bool = True) -> bool:
        """Whether ``path`` exists; a missing one is reported with its full path."""
        if (path.is_dir() if is_dir else path.is_file()):
            return True
        msg = f"missing {'directory' if is_dir else 'file'}: {path} ({what})"
        self.problem(msg) if required else self.warn(msg)
        return False

    def json(self, path: Path, what: str, required: bool = True):
        if not self.need(path, what, required=required):
            return None
        try:
            return read_json(path, what)
        except (ValueError, OSError) as e:
            self.problem(str(e))
            return None


def check_images(r: Report, paths: list[Path], what: str, samples: int, rng: random.Random) -> None:
    """Up to ``samples`` of the image files ``what`` names, at random: present and decodable."""
    if not paths:
        r.problem(f"{what} names no images")
        return
    picked = rng.sample(paths, min(samples, len(paths)))
    missing = [p for p in picked if not p.is_file()]
    unreadable = []
    for p in picked:
        if p.is_file():
            try:
                with Image.open(p) as im:
                    im.verify()  # header and structure, without decoding every pixel
            except Exception as e:  # PIL raises many types for a broken file
                unreadable.append(f"{p} ({type(e).__name__})")
    if missing:
        r.problem(f"{len(missing)} of {len(picked)} sampled image files named by {what} are missing "
                  f"(of {len(paths)} in all), e.g. " + ", ".join(str(p) for p in missing[:3]))
    if unreadable:
        r.problem(f"{len(unreadable)} of {len(picked)} sampled image files named by {what} cannot be read, "
                  "e.g. " + ", ".join(unreadable[:3]))


def check_coco(r: Report, root: Path, samples: int, rng: random.Random, captions_required: bool = False) -> None:
    for split in COCO_SPLITS:
        ann = root / "annotations" / f"instances_{split}.json"
        image_dir = root / split
        has_images = r.need(image_dir, f"COCO {split} images", is_dir=True)
        if not r.need(ann, f"COCO instances annotations of {split}"):
            continue
        try:
            coco = load_coco(ann)
        except (ValueError, OSError) as e:
            r.problem(str(e))
            continue
        d = coco.dataset
        bad = [a.get("id") for a in d["annotations"]
               if a.get("image_id") not in coco.imgs or not (isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4)]
        if bad:
            r.problem(f"{ann}: {len(bad)} annotations without a known image_id or an [x, y, w, h] bbox, e.g. ids {bad[:3]}")
        r.ok(f"{split}: {len(d['images'])} images, {len(d['annotations'])} annotations, {len(d['categories'])} categories")
        if has_images:
            check_images(r, [image_dir / im["file_name"] for im in d["images"]], str(ann), samples, rng)
        cap = root / "annotations" / f"captions_{split}.json"
        data = r.json(cap, "COCO captions (for the caption task)", required=captions_required)
        if data is not None:
            if not isinstance(data, dict) or not {"images", "annotations"} <= set(data) or \
                    any("caption" not in a for a in data["annotations"][:1000]):
                r.problem(f"{cap} is not COCO captions JSON (images, annotations with 'caption')")
            else:
                r.ok(f"{split}: {len(data['annotations'])} captions of {len(data['images'])} images")


def check_refer(r: Report, root: Path, image_root: Path, samples: int, rng: random.Random,
                members=tuple(REFER), required=REFER_REQUIRED) -> None:
    has_images = r.need(image_root, "images of the refer data sets (COCO train2014)", is_dir=True)
    for dataset, split_by in members:
        splits = REFER[dataset, split_by]
        refs_file, inst_file = root / dataset / f"refs({split_by}).p", root / dataset / "instances.json"
        if not r.need(refs_file, f"{dataset} refs, split by {split_by}", required=(dataset, split_by) in required):
            continue
        try:
            refs = load_refs(refs_file)
        except (ValueError, OSError) as e:
            r.problem(f"refs pickle unreadable: {e}")
            continue
        inst = r.json(inst_file, f"{dataset} instances.json (COCO format)")
        if inst is None:
            continue
        if not isinstance(inst, dict) or not {"images", "annotations"} <= set(inst):
            r.problem(f"{inst_file} is not COCO-format JSON (needs 'images' and 'annotations')")
            continue
        per_split = Counter(x["split"] for x in refs)
        missing = [s for s in splits if s not in per_split]
        if missing:
            r.problem(f"{refs_file} lacks split(s) {missing} (has {sorted(per_split)})")
        anns, images = {a["id"] for a in inst["annotations"]}, {im["id"]: im for im in inst["images"]}
        dangling = [x["ref_id"] for x in refs if x["ann_id"] not in anns or x["image_id"] not in images]
        if dangling:
            r.problem(f"{refs_file}: {len(dangling)} refs point to annotations/images missing from {inst_file}, "
                      f"e.g. ref_ids {dangling[:3]}")
        sentences = Counter()
        for x in refs:
            sentences[x["split"]] += len(x["sentences"])
        r.ok(f"{dataset} ({split_by}): " + ", ".join(f"{s} {per_split[s]} refs / {sentences[s]} sentences"
                                                     for s in sorted(per_split)) + f"; {len(images)} images")
        if has_images:
            names = sorted({images[x["image_id"]]["file_name"] for x in refs if x["image_id"] in images})
            check_images(r, [image_root / n for n in names], str(inst_file), samples, rng)


def check_karpathy(r: Report, root: Path, split_file: Path, samples: int, rng: random.Random,
                   restval: bool = True) -> None:
    data = r.json(split_file, "Karpathy split file (dataset_coco.json)")
    if data is None:
        return
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        r.problem(f"{split_file} is not a Karpathy split file (expected {{'images': [...], 'dataset': 'coco'}})")
        return
    keys = {"filename", "split", "sentences"}
    bad = [i for i, e in enumerate(data["images"]) if not isinstance(e, dict) or not keys <= set(e)]
    if bad:
        r.problem(f"{split_file}: {len(bad)} entries lack {sorted(keys)}, e.g. entries {bad[:3]}")
        return
    per_split = Counter(e["split"] for e in data["images"])
    missing = [s for s in KARPATHY_SPLITS if s not in per_split]
    if missing:
        r.problem(f"{split_file} lacks split(s) {missing} (has {sorted(per_split)})")
    if restval and "restval" not in per_split:
        r.warn(f"{split_file} has no 'restval' split (the published file's extra 30k training images)")
    sents = Counter()
    for e in data["images"]:
        sents[e["split"]] += len(e["sentences"])
    r.ok("karpathy: " + ", ".join(f"{s} {per_split[s]} images / {sents[s]} captions" for s in sorted(per_split)))
    paths = [root / e.get("filepath", "") / e["filename"] for e in data["images"]]
    check_images(r, paths, str(split_file), samples, rng)


def check_llava(r: Report, json_files: list[Path], image_root: Path, samples: int, rng: random.Random) -> None:
    has_images = r.need(image_root, "LLaVA-Instruct images (COCO train2017)", is_dir=True)
    for f in json_files:
        data = r.json(f, "LLaVA-Instruct conversations")
        if data is None:
            continue
        if not isinstance(data, list):
            r.problem(f"{f} is not LLaVA-Instruct JSON (expected a list of {{id, image, conversations}})")
            continue
        errors, with_image = [], []
        for e in data:
            if not isinstance(e, dict):
                errors.append(f"an entry is {type(e).__name__}, not an object")
                continue
            try:
                validate_conversation(e, f)
            except ValueError as err:
                errors.append(str(err))
            if e.get("image"):
                with_image.append(e)
        if errors:
            r.problem(f"{f}: {len(errors)} malformed conversations, e.g. " + "; ".join(errors[:2]))
        turns = sum(len(e.get("conversations", [])) for e in data if isinstance(e, dict))
        r.ok(f"{f.name}: {len(data)} conversations ({len(data) - len(with_image)} text-only), {turns} turns")
        if has_images:
            check_images(r, [image_root / e["image"] for e in with_image], str(f), samples, rng)


def run(name: str, root: Path, *, samples: int = 200, seed: int = 0, split_file=None, json_file=None,
        image_root=None) -> Report:
    """Check the layout of data set ``name`` under ``root``; returns the report."""
    if name not in NAMES:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(NAMES)}")
    r, rng = Report(), random.Random(seed)
    if not r.need(root, f"data.root of {name}", is_dir=True):
        return r
    if name == "shapes":  # every layout at once, images addressed from the root
        r.need(root / "meta.json", "written last by make_shapes.py: its absence means an unfinished generation")
        check_coco(r, root, samples, rng, captions_required=True)
        only = (("refcoco", "unc"),)
        check_refer(r, root, Path(image_root or root), samples, rng, members=only, required=only)
        check_karpathy(r, root, Path(split_file or root / "karpathy" / "dataset_coco.json"), samples, rng, restval=False)
        files = [Path(json_file)] if json_file else [root / "llava" / f"llava_instruct_{s}.json" for s in ("train", "val")]
        check_llava(r, files, Path(image_root or root), samples, rng)
    elif name == "coco":
        check_coco(r, root, samples, rng)
    elif name == "refcoco":
        check_refer(r, root, Path(image_root or root / "images" / "mscoco" / "images" / "train2014"), samples, rng)
    elif name == "karpathy":
        check_karpathy(r, root, Path(split_file or root / "karpathy" / "dataset_coco.json"), samples, rng)
    else:
        check_llava(r, [Path(json_file or root / "llava" / "llava_instruct_150k.json")],
                    Path(image_root or root / "train2017"), samples, rng)
    return r


def parse(argv: list[str]) -> dict:
    keys = {"data": "name", "data.root": "root", "samples": "samples", "seed": "seed", "split_file": "split_file",
            "json": "json_file", "image_root": "image_root"}
    args = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if a in ("-h", "--help") or not sep or key not in keys:
            raise SystemExit(__doc__ if a in ("-h", "--help") else f"unknown argument {a!r}; expected key=value with "
                             f"key in {', '.join(keys)}")
        args[keys[key]] = value
    if "name" not in args or "root" not in args:
        raise SystemExit("usage: python datasets_prep/check.py data=NAME data.root=DIR  (NAME: " + ", ".join(NAMES) + ")")
    for k in ("samples", "seed"):
        if k in args:
            args[k] = int(args[k])
    args["root"] = Path(args["root"]).expanduser().resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    name, root = args.pop("name"), args.pop("root")
    if name not in NAMES:
        raise SystemExit(f"unknown data set {name!r}; known: {', '.join(NAMES)}")
    r = run(name, root, **args)
    print(f"data={name} at {root}")
    for line in r.lines:
        print(f"  ok       {line}")
    for w in r.warnings:
        print(f"  warning  {w}")
    for p in r.problems:
        print(f"  PROBLEM  {p}")
    print(f"{len(r.problems)} problem(s), {len(r.warnings)} warning(s)" if r.problems
          else f"layout OK ({len(r.warnings)} warning(s))")
    return 1 if r.problems else 0


if __name__ == "__main__":
    sys.exit(main())
