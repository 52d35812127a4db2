"""Reader for RefCOCO / RefCOCO+ / RefCOCOg visual grounding in the "refer" layout.

Published layout (Yu et al. 2016, Mao et al. 2016; https://github.com/lichengunc/refer)::

    <root>/<dataset>/refs(<split_by>).p   pickled list of refs:
        {ref_id, ann_id, image_id, category_id, split, file_name, sent_ids,
         sentences: [{sent_id, sent, tokens, raw}]}
    <root>/<dataset>/instances.json      COCO-format images/annotations/categories

e.g. ``refcoco/refs(unc).p``, ``refcoco+/refs(unc).p``, ``refcocog/refs(umd).p``. The box of
a ref is the COCO ``bbox`` of its ``ann_id``. Real images are COCO train2014 files named by
the instances.json entries, read from ``<root>/images/mscoco/images/train2014`` by default.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from .coco import object_name
from .io import load_image, read_json, require_file


def _repair_text(obj):
    """Undo latin-1 decoding of UTF-8 byte strings from Python-2 pickles."""
    if isinstance(obj, str):
        try:
            return obj.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return obj
    if isinstance(obj, list):
        return [_repair_text(x) for x in obj]
    if isinstance(obj, dict):
        return {_repair_text(k): _repair_text(v) for k, v in obj.items()}
    return obj


def load_refs(path) -> list[dict]:
    path = require_file(path, "refer refs pickle (e.g. refcoco/refs(unc).p)")
    try:
        with open(path, "rb") as f:
            refs = pickle.load(f)
    except UnicodeDecodeError:
        # The published files were pickled by Python 2; non-ASCII str needs an encoding.
        with open(path, "rb") as f:
            refs = _repair_text(pickle.load(f, encoding="latin-1"))
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise ValueError(f"cannot read refs pickle {path}: {e}") from e
    if not isinstance(refs, list) or (refs and not {"ref_id", "ann_id", "image_id", "split",
                                                   "sentences"} <= set(refs[0])):
        raise ValueError(f"refs pickle {path} is not a refer-format list of refs "
                         "(dicts with ref_id, ann_id, image_id, split, sentences)")
    return refs


class RefCocoGrounding(Dataset):
    """One sample per referring sentence (a ref with k sentences yields k samples).

    Sample::

        {"image": PIL.Image (RGB), "image_id": int, "file_name": str,
         "width": int, "height": int, "expression": str, "bbox": [x, y, w, h],
         "ref_id": int, "sent_id": int, "split": str, "category_id": int,
         "object_name": str (the referred object's attributes and category, "red circle")}
    """

    def __init__(self, *, root, dataset: str = "refcoco", split_by: str = "unc",
                 splits=("train",), image_root=None, exclude_image_ids=None):
        self.root = Path(root)
        self.dataset, self.split_by = dataset, split_by
        self.splits = (splits,) if isinstance(splits, str) else tuple(splits)
        self.image_root = (Path(image_root) if image_root is not None
                           else self.root / "images" / "mscoco" / "images" / "train2014")
        ds_dir = self.root / dataset
        refs = load_refs(ds_dir / f"refs({split_by}).p")
        inst = read_json(ds_dir / "instances.json", f"{dataset} instances.json (COCO format)")
        if not isinstance(inst, dict) or not {"images", "annotations"} <= set(inst):
            raise ValueError(f"{ds_dir / 'instances.json'} is not COCO-format JSON "
                             "(needs 'images' and 'annotations')")
        available = sorted({r["split"] for r in refs})
        unknown = [s for s in self.splits if s not in available]
        if unknown:
            raise ValueError(f"split(s) {unknown} not in {ds_dir / f'refs({split_by}).p'}; "
                             f"available: {available}")
        self.images = {im["id"]: im for im in inst["images"]}
        anns = {a["id"]: a for a in inst["annotations"]}
        categories = {c["id"]: c.get("name", str(c["id"])) for c in inst.get("categories") or []}
        excluded = set(exclude_image_ids or ())
        self.samples = []
        for r in refs:
            if r["split"] not in self.splits or r["image_id"] in excluded:
                continue
            ann = anns.get(r["ann_id"])
            if ann is None or r["image_id"] not in self.images:
                raise ValueError(f"ref {r['ref_id']} points to annotation {r['ann_id']} / "
                                 f"image {r['image_id']} missing from {ds_dir / 'instances.json'}")
            category_id = int(r.get("category_id", ann["category_id"]))
            # the referred object in words ("red circle"), for the token-naming loss
            name = object_name({"category_name": categories.get(category_id, str(category_id)),
                                "attributes": ann.get("attributes")})
            for s in r["sentences"]:
                # "sent" is the cleaned, lower-cased form the published benchmarks use.
                text = (s.get("sent") or s.get("raw") or "").strip()
                self.samples.append({
                    "image_id": int(r["image_id"]), "expression": text,
                    "bbox": [float(v) for v in ann["bbox"]], "ref_id": int(r["ref_id"]),
                    "sent_id": int(s["sent_id"]), "split": r["split"],
                    "category_id": category_id, "object_name": name})

    def __len__(self) -> int:
        return len(self.samples)

    def image_ids(self) -> list[int]:
        """Each sample's COCO image id, without loading an image."""
        return [s["image_id"] for s in self.samples]

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        info = self.images[s["image_id"]]
        image = load_image(self.image_root / info["file_name"])
        return {"image": image, "image_id": s["image_id"], "file_name": info["file_name"],
                "width": int(info.get("width", image.width)),
                "height": int(info.get("height", image.height)),
                **{k: s[k] for k in ("expression", "bbox", "ref_id", "sent_id", "split",
                                     "category_id", "object_name")}}


def merged_grounding(root, specs, splits=("train",), image_root=None,
                     exclude_image_ids=None) -> ConcatDataset:
    """Concatenate several refer data sets, e.g. the paper's RefCOCO/+/g training mix::

        merged_grounding(root, [("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")],
                         splits=("train",))

    The three share COCO train2014 images, and some images in one set's val/test splits
    are training images of another; pass those ids as ``exclude_image_ids`` to avoid
    leaking evaluation images into training.
    """
    parts = [RefCocoGrounding(root=root, dataset=d, split_by=b, splits=splits,
                              image_root=image_root, exclude_image_ids=exclude_image_ids)
             for d, b in specs]
    if not parts:
        raise ValueError("merged_grounding needs at least one (dataset, split_by) spec")
    return ConcatDataset(parts)
