"""Readers for image captioning data: COCO captions JSON and the Karpathy split.

* COCO captions (Chen et al. 2015; https://cocodataset.org/#format-data):
  ``annotations/captions_{train,val}2017.json`` with ``images`` and
  ``annotations: [{id, image_id, caption}]``.
* Karpathy split (Karpathy & Fei-Fei 2015), ``dataset_coco.json``:
  ``{"images": [{filepath, filename, imgid, cocoid, split, sentids,
  sentences: [{raw, tokens, imgid, sentid}]}], "dataset": "coco"}`` where ``split`` is one
  of train / restval / val / test and images live at ``<root>/<filepath>/<filename>``.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .io import check_format, load_image, read_json


def _sample(image, image_id, file_name, width, height, captions) -> dict:
    return {"image": image, "image_id": image_id, "file_name": file_name,
            "width": width, "height": height, "captions": captions}


class CocoCaptions(Dataset):
    """One sample per image with all of its captions.

    Sample::

        {"image": PIL.Image (RGB), "image_id": int, "file_name": str,
         "width": int, "height": int, "captions": [str, ...]}
    """

    def __init__(self, *, image_dir, ann_file):
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"caption image directory not found: {self.image_dir}")
        data = read_json(ann_file, "COCO captions annotation file")
        if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
            raise ValueError(f"{ann_file} is not COCO captions JSON "
                             "(expected keys 'images' and 'annotations')")
        self.images = {im["id"]: im for im in data["images"]}
        self.captions: dict[int, list[str]] = {i: [] for i in self.images}
        for a in sorted(data["annotations"], key=lambda a: a.get("id", 0)):
            if "caption" not in a:
                raise ValueError(f"{ann_file}: annotation {a.get('id')} has no 'caption' "
                                 "(is this an instances file instead of captions?)")
            if a["image_id"] in self.captions:
                self.captions[a["image_id"]].append(a["caption"].strip())
        self.ids = sorted(self.images)

    def __len__(self) -> int:
        return len(self.ids)

    def image_ids(self) -> list[int]:
        """Each sample's COCO image id, without loading an image."""
        return [int(i) for i in self.ids]

    def reference_captions(self) -> list[list[str]]:
        """Each sample's captions, without loading an image."""
        return [list(self.captions[i]) for i in self.ids]

    def __getitem__(self, index: int) -> dict:
        iid = self.ids[index]
        info = self.images[iid]
        image = load_image(self.image_dir / info["file_name"])
        return _sample(image, int(iid), info["file_name"],
                       int(info.get("width", image.width)), int(info.get("height", image.height)),
                       list(self.captions[iid]))


class KarpathyCaptions(Dataset):
    """Images of one Karpathy split, one sample per image with all its captions.

    ``split="train"`` with ``include_restval=True`` adds the "restval" images (the usual
    113k-image training set). ``image_id`` is the COCO id (``cocoid``) so that results can
    be scored against COCO caption annotations. Sample as in :class:`CocoCaptions`, with
    ``file_name = "<filepath>/<filename>"``.
    """

    SPLITS = ("train", "restval", "val", "test")

    def __init__(self, *, root, split_file, split: str = "train",
                 include_restval: bool = False):
        if split not in self.SPLITS:
            raise ValueError(f"unknown Karpathy split {split!r}; expected one of {self.SPLITS}")
        self.root = Path(root)
        data = read_json(split_file, "Karpathy split file (dataset_coco.json)")
        check_format(isinstance(data, dict) and isinstance(data.get("images"), list),
                     f"{split_file} is not a Karpathy split file "
                     "(expected {'images': [...], 'dataset': ...})")
        wanted = {split} | ({"restval"} if split == "train" and include_restval else set())
        self.entries = [e for e in data["images"] if e["split"] in wanted]

    def __len__(self) -> int:
        return len(self.entries)

    def image_ids(self) -> list[int]:
        """Each sample's COCO image id (``cocoid``), without loading an image."""
        return [int(e["cocoid"]) for e in self.entries]

    def reference_captions(self) -> list[list[str]]:
        """Each sample's captions, without loading an image."""
        return [[s["raw"].strip() for s in e["sentences"]] for e in self.entries]

    def __getitem__(self, index: int) -> dict:
        e = self.entries[index]
        file_name = f"{e['filepath']}/{e['filename']}" if e.get("filepath") else e["filename"]
        image = load_image(self.root / file_name)
        # The split file carries no image size; the decoded image is authoritative.
        return _sample(image, int(e["cocoid"]), file_name, image.width, image.height,
                       [s["raw"].strip() for s in e["sentences"]])
