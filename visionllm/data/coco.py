"""Reader for COCO-format object detection / instance segmentation annotations.

Reads the published COCO "instances" JSON (https://cocodataset.org/#format-data:
``images``, ``annotations`` with ``bbox=[x, y, w, h]`` in pixels, ``segmentation`` as
polygons or RLE, ``iscrowd``, and ``categories``) through ``pycocotools.coco.COCO``, so
that the same object can be handed to ``COCOeval``. Works for real COCO
(``annotations/instances_val2017.json`` + ``val2017/``) and for the synthetic shapes set.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from pycocotools.coco import COCO
from torch.utils.data import Dataset

from visionllm.evaluation.cider import words

from .io import load_image, read_json

_REQUIRED = ("images", "annotations", "categories")


def object_name(obj: dict) -> str:
    """An object in words: its attributes, then its category ("red circle"); a name that
    already holds an attribute word (a described class set's "red shape") keeps it once."""
    name = str(obj["category_name"])
    words = name.split()
    return " ".join([*(a for a in obj.get("attributes") or () if a not in words), name])


def load_coco(ann_file, what: str = "COCO instances annotation file") -> COCO:
    """A ``COCO`` object for ``ann_file``, with clear errors for missing/empty/non-COCO files."""
    data = read_json(ann_file, what)
    missing = [k for k in _REQUIRED if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{what} {ann_file} is not COCO instances JSON: "
                         f"missing key(s) {missing} (expected {list(_REQUIRED)})")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """One sample per image (images without annotations are kept: they count in COCO eval).

    Sample::

        {"image": PIL.Image (RGB), "image_id": int, "file_name": str,
         "width": int, "height": int,
         "objects": [{"bbox": [x, y, w, h], "category_id": int, "category_name": str,
                      "supercategory": str, "attributes": [str, ...] (often empty),
                      "segmentation": polygons or RLE as in the file, "area": float,
                      "iscrowd": int}, ...]}
    """

    def __init__(self, *, image_dir, ann_file, include_crowd: bool = False, captions_file=None):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.include_crowd = include_crowd
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image directory not found: {self.image_dir}")
        self.coco = load_coco(self.ann_file)
        self.ids = sorted(self.coco.imgs)
        # optional: the words each image's captions use (COCO captions JSON of the same images),
        # image-level targets for a first stage (model.concepts of the specialist)
        self.caption_words = caption_words(captions_file, self.ids) if captions_file else None
        self._cat_names = {c["id"]: c["name"] for c in self.coco.dataset["categories"]}
        self._supercategory = {c["id"]: c.get("supercategory") or "object" for c in self.coco.dataset["categories"]}

    @property
    def categories(self) -> list[dict]:
        return [{"id": i, "name": self._cat_names[i]} for i in sorted(self._cat_names)]

    @property
    def attribute_names(self) -> list[str]:
        """Every attribute word the annotations use (their optional ``attributes`` lists)."""
        return sorted({str(w) for a in self.coco.dataset["annotations"] for w in a.get("attributes") or []})

    @property
    def supercategory_names(self) -> list[str]:
        return sorted(set(self._supercategory.values()))

    def __len__(self) -> int:
        return len(self.ids)

    def image_ids(self) -> list[int]:
        return [int(i) for i in self.ids]

    def object_counts(self) -> dict[int, int]:
        """image id -> number of its objects (as ``objects`` filters them), for curricula."""
        return {int(i): len(self.objects(i)) for i in self.ids}

    def objects(self, image_id: int) -> list[dict]:
        """The filtered annotations of one image, without loading the image."""
        out = []
        for a in self.coco.imgToAnns.get(image_id, []):
            crowd = int(a.get("iscrowd", 0))
            if crowd and not self.include_crowd:
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            if w < 1 or h < 1:  # degenerate boxes exist in real COCO and break box losses
                continue
            cid = a["category_id"]
            out.append({"bbox": [x, y, w, h], "category_id": cid,
                        "category_name": self._cat_names.get(cid, str(cid)),
                        "supercategory": self._supercategory.get(cid, "object"),
                        "attributes": [str(w) for w in a.get("attributes") or []],
                        "segmentation": a.get("segmentation"),
                        "area": float(a.get("area", w * h)), "iscrowd": crowd})
        return out

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = load_image(self.image_dir / info["file_name"])
        record = {"image": image, "image_id": int(image_id), "file_name": info["file_name"],
                  "width": int(info.get("width", image.width)),
                  "height": int(info.get("height", image.height)),
                  "objects": self.objects(image_id)}
        if self.caption_words is not None:
            record["caption_words"] = self.caption_words.get(int(image_id))  # None: the image has no caption
        return record


def caption_words(captions_file, image_ids: list[int]) -> dict[int, list[str]]:
    """image id -> the sorted distinct words of its captions, from a COCO captions JSON; an
    error where the file names none of ``image_ids`` (the captions of other images)."""
    data = read_json(captions_file, "COCO captions annotation file")
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{captions_file} is not COCO captions JSON (expected key 'annotations')")
    wanted, out = set(image_ids), {}
    for a in data["annotations"]:
        if "caption" not in a or "image_id" not in a:
            raise ValueError(f"{captions_file}: annotation {a.get('id')} has no 'caption' or 'image_id' "
                             "(is this an instances file instead of captions?)")
        if a["image_id"] in wanted:
            out.setdefault(int(a["image_id"]), set()).update(words(a["caption"]))
    if not out:
        raise ValueError(f"{captions_file} has captions for none of the {len(wanted)} images of the instances file "
                         "(captions of another split?)")
    return {i: sorted(w) for i, w in out.items()}
