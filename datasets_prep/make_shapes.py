"""Generate the built-in synthetic "shapes" data set in the published on-disk formats.

Small images with coloured shapes on textured backgrounds, annotated for every task the
model trains on, written in the same layouts as the real data sets so that the very same
readers (``visionllm.data``) load both:

* COCO instances (Lin et al. 2014; https://cocodataset.org/#format-data):
  ``annotations/instances_{train,val}2017.json`` with images in ``train2017/``, ``val2017/``.
  Segmentations are polygons of the *visible* part of each object. Each annotation also
  lists its ``attributes`` (here its colour, ``["red"]``), as Visual Genome and LVIS-style
  attribute sets do; COCO's own tools ignore the extra key.
* COCO captions: ``annotations/captions_{train,val}2017.json`` (5 captions per image).
* Karpathy split (Karpathy & Fei-Fei 2015, ``dataset_coco.json``): ``karpathy/dataset_coco.json``.
* refer layout for RefCOCO (Yu et al. 2016; https://github.com/lichengunc/refer):
  ``refcoco/refs(unc).p`` (pickled list of refs) and ``refcoco/instances.json``.
* LLaVA-Instruct conversations (Liu et al. 2023):
  ``llava/llava_instruct_{train,val}.json``; and ``llava/llava_instruct_train_long.json``, the
  same training images with longer conversations (every question a scene allows, up to
  ``--long-turns`` short answers), which ``experiment=shapes`` trains on.
* ``meta.json`` -- written last; its presence marks a complete generation.

Usage::

    python datasets_prep/make_shapes.py --out data/shapes [--seed 0] [--train 4000] [--val 300] [--vqa-turns 3]
        [--long-turns 10]

Each image is drawn from ``np.random.default_rng([seed, split_id, index])`` so the output
is byte-identical for the same arguments, independently of the number of workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets_prep.shapes import language
from datasets_prep.shapes.scene import BACKGROUNDS, CATEGORIES, COLORS, make_scene

VERSION = "1.0"
SPLITS = ("train", "val")
SPLIT_DIRS = {"train": "train2017", "val": "val2017"}
VAL_ID_OFFSET = 1_000_000
INCOMPLETE = ".shapes_incomplete"
OWNED = ["train2017", "val2017", "annotations", "karpathy", "refcoco", "llava"]


def code_fingerprint() -> str:
    """Hash of the generator's source, so that editing it invalidates an existing set."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in [here / "make_shapes.py", *sorted((here / "shapes").glob("*.py"))]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def image_id(split: str, index: int) -> int:
    return index + 1 if split == "train" else VAL_ID_OFFSET + index


def _generate_one(job: tuple) -> dict:
    """Worker: draw, save and describe one image (pure function of its job tuple)."""
    out, seed, split, index, vqa_turns, long_turns = job
    split_id = SPLITS.index(split)
    image, scene = make_scene(np.random.default_rng([seed, split_id, index]))
    iid = image_id(split, index)
    file_name = f"{iid:012d}.png"
    image.save(Path(out) / SPLIT_DIRS[split] / file_name, format="PNG", compress_level=3)
    # Text gets its own stream so that changing the text generator keeps the pictures.
    trng = np.random.default_rng([seed, split_id, index, 1])
    caps = language.captions(scene, trng)
    refs = language.referring_expressions(scene, trng)
    # the longer conversation draws from where the usual one starts, so it is what
    # --vqa-turns long_turns would have written
    lrng = np.random.default_rng()
    lrng.bit_generator.state = trng.bit_generator.state
    conv = language.conversation(scene, trng, detailed_caption=caps[-1], max_short=vqa_turns)
    long = (language.conversation(scene, lrng, detailed_caption=caps[-1], max_short=long_turns)
            if long_turns and split == "train" else None)
    return {"split": split, "index": index, "image_id": iid, "file_name": file_name,
            "scene": scene, "captions": caps, "refs": refs, "conversation": conv, "long": long}


def _dump_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # dumps() uses the C encoder; dump() to a file streams through the slow pure-Python one.
    tmp.write_text(json.dumps(obj, separators=(",", ":")))
    os.replace(tmp, path)


def _dump_pickle(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    os.replace(tmp, path)


def _refer_split(index: int, n_val: int) -> str:
    return ("val", "testA", "testB")[min(2, index * 3 // max(n_val, 1))]


def _karpathy_split(index: int, n_val: int) -> str:
    return "val" if index < n_val // 2 else "test"


def _assemble(records: list[dict], out: Path, n_val: int) -> dict:
    """Turn per-image records into the published files; returns counts for meta.json."""
    info = {"description": "VisionLLM synthetic shapes", "version": VERSION}
    cats = [dict(c) for c in CATEGORIES]
    inst = {s: {"info": info, "licenses": [], "images": [], "annotations": [],
                "categories": cats} for s in SPLITS}
    caps = {s: {"info": info, "licenses": [], "images": [], "annotations": []} for s in SPLITS}
    llava = {s: [] for s in SPLITS}
    llava_long = []  # the training images again, with longer conversations
    karpathy, refs, ref_images, ref_anns = [], [], [], []
    ann_id = cap_id = sent_id = ref_id = ref_sent_id = 0
    for imgid, r in enumerate(records):
        split, sc = r["split"], r["scene"]
        img = {"id": r["image_id"], "file_name": r["file_name"],
               "width": sc["width"], "height": sc["height"]}
        inst[split]["images"].append(img)
        caps[split]["images"].append(img)
        rel_path = f"{SPLIT_DIRS[split]}/{r['file_name']}"
        anns = []
        for o in sc["objects"]:
            ann_id += 1
            anns.append({"id": ann_id, "image_id": r["image_id"],
                         "category_id": o["category_id"], "bbox": o["bbox"],
                         "area": o["area"], "segmentation": o["segmentation"], "iscrowd": 0,
                         "attributes": [o["color"]]})
        inst[split]["annotations"].extend(anns)

        sentences = []
        for c in r["captions"]:
            cap_id += 1
            caps[split]["annotations"].append({"id": cap_id, "image_id": r["image_id"],
                                               "caption": c})
            sentences.append({"raw": c, "tokens": language.tokenize(c), "imgid": imgid,
                              "sentid": sent_id})
            sent_id += 1
        karpathy.append({
            "filepath": SPLIT_DIRS[split], "filename": r["file_name"], "imgid": imgid,
            "cocoid": r["image_id"],
            "split": "train" if split == "train" else _karpathy_split(r["index"], n_val),
            "sentids": [s["sentid"] for s in sentences], "sentences": sentences})

        if r["refs"]:
            ref_images.append({**img, "file_name": rel_path})
            ref_anns.extend(anns)
        for ref in r["refs"]:
            ann = anns[ref["object"]]
            sents = []
            for text in ref["sentences"]:
                toks = language.tokenize(text)
                sents.append({"sent_id": ref_sent_id, "sent": " ".join(toks),
                              "tokens": toks, "raw": text})
                ref_sent_id += 1
            refs.append({
                "ref_id": ref_id, "ann_id": ann["id"], "image_id": r["image_id"],
                "category_id": ann["category_id"],
                "split": "train" if split == "train" else _refer_split(r["index"], n_val),
                "file_name": rel_path, "sent_ids": [s["sent_id"] for s in sents],
                "sentences": sents})
            ref_id += 1

        llava[split].append({"id": f"{r['image_id']:012d}", "image": rel_path,
                             "conversations": r["conversation"]})
        if r.get("long"):
            llava_long.append({"id": f"{r['image_id']:012d}", "image": rel_path, "conversations": r["long"]})

    for d in ("annotations", "karpathy", "refcoco", "llava"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        _dump_json(inst[s], out / "annotations" / f"instances_{SPLIT_DIRS[s]}.json")
        _dump_json(caps[s], out / "annotations" / f"captions_{SPLIT_DIRS[s]}.json")
        _dump_json(llava[s], out / "llava" / f"llava_instruct_{s}.json")
    if llava_long:
        _dump_json(llava_long, out / "llava" / "llava_instruct_train_long.json")
    _dump_json({"images": karpathy, "dataset": "coco"}, out / "karpathy" / "dataset_coco.json")
    _dump_pickle(refs, out / "refcoco" / "refs(unc).p")
    _dump_json({"info": info, "images": ref_images, "annotations": ref_anns,
                "categories": cats}, out / "refcoco" / "instances.json")
    return {"images": {s: len(inst[s]["images"]) for s in SPLITS},
            "annotations": {s: len(inst[s]["annotations"]) for s in SPLITS},
            "captions": cap_id, "refs": len(refs), "ref_sentences": ref_sent_id,
            "conversations": {s: len(llava[s]) for s in SPLITS}}


def make_shapes(out, *, seed: int = 0, train: int = 4000, val: int = 300,
                workers: int | None = None, force: bool = False, progress: bool = True,
                vqa_turns: int = 3, long_turns: int = 10) -> Path:
    """Generate the data set under ``out`` (skipped if already generated with these args)."""
    out = Path(out)
    if vqa_turns < 2:
        raise ValueError(f"vqa_turns must be at least 2, not {vqa_turns}")
    if long_turns and long_turns < 2:
        raise ValueError(f"long_turns must be 0 (none) or at least 2, not {long_turns}")
    args = {"seed": int(seed), "train": int(train), "val": int(val), "version": VERSION,
            "code": code_fingerprint(), "vqa_turns": int(vqa_turns), "long_turns": int(long_turns)}
    meta_path = out / "meta.json"
    if meta_path.exists() and not force:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("args") == args:
            print(f"already generated: {out} ({args})")
            return out
    # Only wipe directories that a previous (possibly interrupted) run of this generator
    # created, never someone else's data that happens to live under --out.
    if meta_path.exists() or (out / INCOMPLETE).exists():
        meta_path.unlink(missing_ok=True)
        for d in OWNED:
            shutil.rmtree(out / d, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text(json.dumps(args))
    for s in SPLITS:
        (out / SPLIT_DIRS[s]).mkdir(exist_ok=True)

    jobs = [(str(out), int(seed), s, i, int(vqa_turns), int(long_turns)) for s, n in (("train", train), ("val", val))
            for i in range(n)]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="shapes", unit="img", disable=not progress)
    records = []
    if workers > 1 and len(jobs) >= 64:
        # imap keeps job order, so ids and the JSON files do not depend on scheduling.
        with mp.get_context("fork").Pool(workers) as pool:
            for r in pool.imap(_generate_one, jobs, chunksize=32):
                records.append(r)
                bar.update()
    else:
        for job in jobs:
            records.append(_generate_one(job))
            bar.update()
    bar.close()

    counts = _assemble(records, out, n_val=int(val))
    meta = {"generator": "visionllm datasets_prep/make_shapes.py", "version": VERSION,
            "args": args, "seed": int(seed), "counts": counts, "categories": CATEGORIES,
            "colors": {k: list(v) for k, v in COLORS.items()},
            "backgrounds": list(BACKGROUNDS)}
    _dump_json(meta, meta_path)
    (out / INCOMPLETE).unlink(missing_ok=True)
    if progress:
        print(f"wrote {out}: {counts['images']} images, {counts['refs']} refs")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/shapes", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=4000, help="number of train images")
    p.add_argument("--val", type=int, default=300, help="number of val images")
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: min(2, cpu_count))")
    p.add_argument("--force", action="store_true", help="regenerate even if up to date")
    p.add_argument("--vqa-turns", type=int, default=3,
                   help="most short answers per conversation (default 3: 2 or 3 of distinct types; "
                        "more: every question the scene allows, up to this many)")
    p.add_argument("--long-turns", type=int, default=10,
                   help="most short answers in llava/llava_instruct_train_long.json, the same training "
                        "images with longer conversations (default 10; 0: no such file)")
    a = p.parse_args(argv)
    make_shapes(a.out, seed=a.seed, train=a.train, val=a.val, workers=a.workers, force=a.force,
                vqa_turns=a.vqa_turns, long_turns=a.long_turns)


if __name__ == "__main__":
    main()
