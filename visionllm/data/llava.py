"""Reader for LLaVA-Instruct visual instruction data (Liu et al. 2023, "Visual Instruction
Tuning"; e.g. ``llava_instruct_150k.json``).

Published format: a JSON list of ``{"id": str, "image": "<path relative to the image root>",
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}, ...]}``
with turns alternating human/gpt and the ``<image>`` placeholder in the first human turn.
Entries without an ``image`` (text-only conversations in some LLaVA mixtures) are skipped.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .io import check_format, load_image, read_json

IMAGE_TOKEN = "<image>"


def validate_conversation(entry: dict, source="") -> None:
    """Raise ``ValueError`` naming the entry id if the conversation is malformed."""
    eid = entry.get("id", "?")
    where = f" in {source}" if source else ""
    conv = entry.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise ValueError(f"LLaVA entry {eid!r}{where}: 'conversations' must be a non-empty list")
    for k, turn in enumerate(conv):
        expected = "human" if k % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected:
            got = turn.get("from") if isinstance(turn, dict) else type(turn).__name__
            raise ValueError(f"LLaVA entry {eid!r}{where}: turn {k} is from {got!r}, expected "
                             f"{expected!r} (turns must alternate human/gpt, starting with human)")
        check_format(isinstance(turn.get("value"), str),
                     f"LLaVA entry {eid!r}{where}: turn {k} has no text 'value'")
    if len(conv) % 2:
        raise ValueError(f"LLaVA entry {eid!r}{where}: ends with a human turn (no answer)")
    if IMAGE_TOKEN not in conv[0]["value"]:
        raise ValueError(f"LLaVA entry {eid!r}{where}: first human turn lacks {IMAGE_TOKEN!r}")
    if any(IMAGE_TOKEN in t["value"] for t in conv[1:]):
        raise ValueError(f"LLaVA entry {eid!r}{where}: {IMAGE_TOKEN!r} may only appear in the "
                         "first human turn")


class LlavaInstruct(Dataset):
    """One sample per conversation (validated at construction time).

    Sample::

        {"image": PIL.Image (RGB), "image_id": str, "file_name": str,
         "width": int, "height": int,
         "conversations": [{"from": "human"|"gpt", "value": str}, ...]}

    With ``instances_file`` (COCO instances JSON of the same images, as LLaVA-Instruct's COCO
    images have), each sample also holds ``"object_boxes"``: the [x, y, w, h] pixel box of every
    object of its image (an empty list for an image the file does not list), which the VQA task
    can teach the image tokenizer from (``vqa.training_sample``).
    """

    def __init__(self, *, json_file, image_root, instances_file=None):
        self.json_file = Path(json_file)
        self.image_root = Path(image_root)
        self.object_boxes = None if instances_file is None else _boxes_by_image(instances_file)
        data = read_json(self.json_file, "LLaVA instruction file")
        check_format(isinstance(data, list), f"{self.json_file} is not LLaVA-Instruct JSON "
                     "(expected a list of {id, image, conversations})")
        self.entries = []
        self.num_text_only = 0
        for e in data:
            check_format(isinstance(e, dict),
                         f"{self.json_file}: entries must be objects, got {e!r:.80}")
            if not e.get("image"):
                self.num_text_only += 1
                continue
            validate_conversation(e, self.json_file)
            self.entries.append(e)

    def __len__(self) -> int:
        return len(self.entries)

    def image_ids(self) -> list[int | None]:
        """Each sample's image id as a number where its ``id`` (or image file stem) is one
        (LLaVA-Instruct's ids are zero-padded COCO ids), else None; no image is loaded."""
        out = []
        for e in self.entries:
            key = str(e.get("id", Path(e["image"]).stem))
            out.append(int(key) if key.isdigit() else None)
        return out

    def __getitem__(self, index: int) -> dict:
        e = self.entries[index]
        image = load_image(self.image_root / e["image"])
        key = str(e.get("id", Path(e["image"]).stem))
        out = {"image": image, "image_id": key,
               "file_name": e["image"], "width": image.width, "height": image.height,
               "conversations": [{"from": t["from"], "value": t["value"]}
                                 for t in e["conversations"]]}
        if self.object_boxes is not None:
            out["object_boxes"] = list(self.object_boxes.get(int(key), [])) if key.isdigit() else []
        return out


def _boxes_by_image(instances_file) -> dict[int, list[list[float]]]:
    data = read_json(instances_file, "COCO instances file")
    check_format(isinstance(data, dict) and isinstance(data.get("annotations"), list),
                 f"{instances_file} is not COCO instances JSON (expected a dict with 'annotations')")
    out: dict[int, list[list[float]]] = {}
    for a in data["annotations"]:
        check_format("bbox" in a and "image_id" in a, f"{instances_file}: annotation {a.get('id')} lacks bbox or image_id")
        out.setdefault(int(a["image_id"]), []).append([float(x) for x in a["bbox"]])
    return out
