"""A specialist baseline for honesty (the issue's "same budget" comparison; the paper compares
its generalist with Deformable DETR R50: 44.6 vs 45.7 box AP).

The same language-guided image tokenizer, but each image token is decoded by a plain
Deformable DETR head (class logits over the data set's fixed categories and a box regressed
from the token's reference point) instead of the LLM. Trained with DETR's Hungarian-matched
focal + L1 + GIoU losses, plus the tokenizer's own loss (objectness and centres on every
decoder layer) exactly as VisionLLM trains it, so both models train the same tokenizer the same
way and differ only in the head; answers the detection evaluator like VisionLLM does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from visionllm.box_ops import generalized_box_iou
from visionllm.modeling.box_prior import box_head, prior_boxes
from visionllm.modeling.image_tokenizer import ImageTokenizer
from visionllm.modeling.losses import global_counts, tokenizer_loss
from visionllm.modeling.matcher import hungarian


class DetrSpecialist(nn.Module):
    def __init__(self, *, image_tokenizer: ImageTokenizer, categories: list[str], w_cls: float = 2.0,
                 w_l1: float = 5.0, w_giou: float = 2.0, attributes: list[str] | None = None,
                 w_attr: float = 1.0, concepts: list[str] | None = None, w_concept: float = 1.0):
        super().__init__()
        if not categories:
            raise ValueError("the specialist needs its fixed category list (data.categories)")
        self.image_tokenizer = image_tokenizer
        self.categories = list(categories)
        d = image_tokenizer.d_model
        self.class_head = nn.Linear(d, len(categories))
        nn.init.constant_(self.class_head.bias, -math.log((1 - 0.01) / 0.01))
        self.box_head = box_head(d)  # (dx, dy) on the reference centre in logit space, then (w, h)
        self.w_cls, self.w_l1, self.w_giou = w_cls, w_l1, w_giou
        # Off in the baseline. As the generalist's first stage (docs/design.md, trainer.first_stage):
        # each matched token also says its object's attribute word (its colour), so that the
        # tokens the generalist takes carry colour as well as shape.
        self.attributes = list(attributes or [])
        if len(set(self.attributes)) != len(self.attributes) or len(self.attributes) == 1:
            raise ValueError(f"model.attributes must be two or more distinct words, not {self.attributes}")
        self.attribute_head = nn.Linear(d, len(self.attributes)) if self.attributes else None
        self.w_attr = w_attr
        # Off in the baseline. As the first stage: the whole image (the encoder memory averaged at
        # each scale, ImageTokens.scene) also says which of these words its captions use, so that
        # the frozen backbone the generalist takes keeps what no object query is asked about (the
        # background; docs/design.md, "Words of the scene")
        self.concepts = list(concepts or [])
        if len(set(self.concepts)) != len(self.concepts) or any(len(w.split()) != 1 for w in self.concepts):
            raise ValueError(f"model.concepts must be distinct single words, not {self.concepts}")
        levels = image_tokenizer.backbone.num_levels
        self.concept_head = nn.Linear(d * levels, len(self.concepts)) if self.concepts else None
        self.w_concept = w_concept

    def _attribute_targets(self, names: list[str]) -> list[int]:
        """Each object's attribute class from its name in words ("red circle" -> "red"); -100
        (ignored) where the name holds none of the listed words or more than one."""
        index = {w: i for i, w in enumerate(self.attributes)}
        out = []
        for name in names:
            hits = {index[w] for w in name.split() if w in index}
            out.append(hits.pop() if len(hits) == 1 else -100)
        return out

    def _concept_loss(self, scene: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        """Multi-label: each listed word, used by the image's captions or not; summed over the
        words, averaged over the images with captions (none: zero, with a gradient)."""
        if any("caption_words" not in t for t in targets):
            raise ValueError("model.concepts needs each image's caption words: give the detection reader its "
                             "captions (data.train.detection.captions_file, a COCO captions JSON)")
        rows = [b for b, t in enumerate(targets) if t["caption_words"] is not None]
        y = torch.tensor([[float(w in set(targets[b]["caption_words"])) for w in self.concepts] for b in rows],
                         dtype=scene.dtype, device=scene.device).view(len(rows), len(self.concepts))
        logits = self.concept_head(scene[rows])
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        return self.w_concept * bce / max(len(rows), 1)

    def _boxes(self, toks) -> tuple[torch.Tensor, torch.Tensor]:
        return self.class_head(toks.embeds), prior_boxes(self.box_head, toks.embeds, toks.points)

    def _category_targets(self, request, target) -> torch.Tensor:
        index = {n: i for i, n in enumerate(self.categories)}
        return torch.tensor([index[request.classes[k]] for k in target["labels"].tolist()], dtype=torch.long)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        toks = self.image_tokenizer(batch["images"], batch["pixel_mask"], batch["instructions"])
        logits, boxes = self._boxes(toks)
        B, M, C = logits.shape
        cls_target = torch.zeros_like(logits)
        l1 = giou = logits.new_zeros(())
        n_all = 0
        attr_tokens, attr_targets = [], []
        for b, (req, tgt) in enumerate(zip(batch["requests"], batch["targets"])):
            labels = self._category_targets(req, tgt).to(logits.device)
            coords = tgt["coords"].to(logits.device)
            if not len(labels):
                continue
            p = logits[b].sigmoid()
            cost = (self.w_cls * -p[:, labels] + self.w_l1 * torch.cdist(boxes[b], coords, p=1)
                    - self.w_giou * generalized_box_iou(boxes[b], coords))
            i, j = hungarian(cost)
            cls_target[b, i, labels[j]] = 1.0
            l1 = l1 + F.l1_loss(boxes[b, i], coords[j], reduction="sum")
            giou = giou + (1 - generalized_box_iou(boxes[b, i], coords[j]).diagonal()).sum()
            n_all += len(labels)
            if self.attribute_head is not None:
                if "names" not in tgt:
                    raise ValueError("model.attributes needs each object's name in words (targets' names)")
                words = self._attribute_targets(tgt["names"])
                attr_tokens.append(toks.embeds[b, torch.as_tensor(i, device=logits.device)])
                attr_targets.append(torch.tensor([words[k] for k in j.tolist()], dtype=torch.long))
        (n,) = global_counts([n_all], logits.device)
        n = max(n, 1.0)
        tok_losses, _ = tokenizer_loss(
            toks.layer_logits, toks.layer_points, [t["centers"].to(logits.device) for t in batch["targets"]], num=n
        )
        losses = {
            "loss_cls": self.w_cls * sigmoid_focal_loss(logits, cls_target, reduction="sum") / n,
            "loss_l1": self.w_l1 * l1 / n,
            "loss_giou": self.w_giou * giou / n,
            **tok_losses,
        }
        if self.attribute_head is not None:
            # every rank computes it (zero without a target) so that the head always has a gradient
            e = torch.cat(attr_tokens) if attr_tokens else toks.embeds.new_zeros(0, toks.embeds.shape[-1])
            t = torch.cat(attr_targets) if attr_targets else torch.zeros(0, dtype=torch.long)
            ce = F.cross_entropy(self.attribute_head(e), t.to(logits.device), ignore_index=-100, reduction="sum")
            losses["loss_attr"] = self.w_attr * ce / n
        if self.concept_head is not None:
            losses["loss_concept"] = self._concept_loss(toks.scene, batch["targets"])
        losses["loss"] = sum(losses.values())
        return losses

    @torch.no_grad()
    def predict(self, batch: dict) -> list[dict]:
        """Answers in VisionLLM's format: per requested class set, labels index the request's classes."""
        toks = self.image_tokenizer(batch["images"], batch["pixel_mask"], batch["instructions"])
        logits, boxes = self._boxes(toks)
        out = []
        for b, req in enumerate(batch["requests"]):
            unknown = [c for c in req.classes if c not in self.categories]
            if unknown:
                raise ValueError(f"the specialist knows only its training categories; unknown: {unknown}")
            cols = torch.tensor([self.categories.index(c) for c in req.classes], device=logits.device)
            probs = logits[b][:, cols].sigmoid()
            scores, labels = probs.max(-1)
            answer = {"labels": labels, "scores": scores, "points": boxes[b].view(-1, 2, 2), "probs": probs}
            if self.concept_head is not None:  # P(the captions use each of model.concepts)
                answer["concepts"] = self.concept_head(toks.scene[b]).sigmoid()
            out.append(answer)
        return out


def build_specialist(*, backbone, text_encoder, image_tokenizer: dict, categories: list[str],
                     attributes: list[str] | None = None, attribute_loss: float = 1.0,
                     concepts: list[str] | None = None, concept_loss: float = 1.0) -> DetrSpecialist:
    tok = ImageTokenizer(backbone=backbone, text_encoder=text_encoder, **dict(image_tokenizer))
    return DetrSpecialist(image_tokenizer=tok, categories=categories,
                          attributes=list(attributes) if attributes else None, w_attr=attribute_loss,
                          concepts=list(concepts) if concepts else None, w_concept=concept_loss)
