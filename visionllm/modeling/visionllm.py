"""VisionLLM (METHOD.md §1): the language-guided image tokenizer feeds M image tokens into a
LoRA-tuned LLM, which answers structured requests by output-format-as-query decoding and
text requests by ordinary generation.

``forward(batch) -> losses`` trains; ``predict(batch) -> answers`` infers. A batch is what
``visionllm.data.transforms.collate`` makes.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext

import torch
from torch import nn

from visionllm.modeling.box_prior import answer_anchors, box_head, matched_prior_loss, prior_boxes
from visionllm.modeling.class_names import ClassNames
from visionllm.modeling.decoding import decode_groups, span_positions, splice_image_tokens
from visionllm.modeling.deformable import MLP, sine_embed
from visionllm.modeling.generation import TextWriting
from visionllm.modeling.image_tokenizer import ImageTokenizer
from visionllm.modeling.llm import LLM
from visionllm.modeling.losses import (
    answer_loss,
    expected_offsets,
    global_counts,
    read_offsets,
    tokenizer_loss,
)
from visionllm.modeling.name_fit import NameFit
from visionllm.modeling.name_location import NameLocation
from visionllm.modeling.name_pool import NamePool
from visionllm.modeling.named_copy import build_named_copy
from visionllm.modeling.naming import TokenNaming, image_extent, side_words
from visionllm.modeling.readout import TextReadout
from visionllm.modeling.readout import rms as _rms
from visionllm.modeling.token_classes import TokenClasses
from visionllm.tasks.instructions import Request, question_line
from visionllm.vocab import LOC_HALF

TEXT_PASS = 10**6  # the text pass's key among the structured passes' point counts, sorted last


def _embedding_rms(llm: LLM) -> float:
    """RMS of the LLM's input embedding rows of its text tokens (0.02 where they are not
    materialized, as in the planner's meta-device build)."""
    emb = llm.model.get_input_embeddings().weight
    if emb.is_meta:
        return 0.02
    rows = emb[: llm.vocab.image].detach().float()
    return float(rows.pow(2).mean().sqrt())


class VisionLLM(TextWriting, TokenNaming, ClassNames, nn.Module):
    def __init__(
        self,
        *,
        image_tokenizer: ImageTokenizer,
        llm: LLM,
        none_weight: float = 0.1,
        group_matching: str = "tokenizer",
        loss_weights: dict[str, float] | None = None,
        token_scale: str = "free",
        text_readout: bool = False,
        token_names: float = 0.0,
        token_names_layer: int = 1,
        named_copy: bool = False,
        copy_where: bool = False,
        token_sides: bool | float = False,
        copy_count: bool = False,
        count_loss: float = 0.0,
        count_exist: bool = False,
        name_pool: bool = False,
        referent_loss: float = 0.0,
        copy_follow: bool = False,
        copy_stay: bool = False,
        name_location: bool = False,
        name_location_from: float = 0.0,
        name_location_relative: bool = False,
        name_fit: bool = False,
        name_fit_gain: float | None = None,
        token_classes: float = 0.0,
        group_attention: str = "blocks",
        box_prior: bool = False,
        polygon_free_start: bool = False,
        scene_token: bool = False,
    ):
        super().__init__()
        self.image_tokenizer = image_tokenizer
        self.llm = llm
        # [ours] the one pass's attention by blocks (decoding.grouped_attention), or with the full
        # (T, T) mask, as any attention implementation takes it; the same numbers
        if group_attention not in ("blocks", "dense"):
            raise ValueError(f"model.group_attention must be 'blocks' or 'dense', not {group_attention!r}")
        self.dense_groups = group_attention == "dense"
        d, H = image_tokenizer.d_model, llm.hidden_size
        # v_i = Linear(e_i) + MLP(sine(l_i))  [ours]
        self.token_proj = nn.Linear(d, H)
        self.loc_embed = MLP(d, H, H, 2)
        # [ours] each token also regresses a box, and answers are offsets from its points (box_prior.py)
        self.box_head = box_head(d) if box_prior else None
        # [ours] every image token also carries the whole image's look at each scale (the scene:
        # image_tokenizer.level_means), zero at the start (docs/design.md, "The scene")
        self.scene_proj = None
        if scene_token:
            self.scene_proj = nn.Linear(d * image_tokenizer.backbone.num_levels, H)
            nn.init.zeros_(self.scene_proj.weight)
            nn.init.zeros_(self.scene_proj.bias)
        # [ours] a polygon target is learned from its start nearest the answer (losses.nearest_start)
        self.polygon_free_start = bool(polygon_free_start)
        # token_scale "embedding" [ours]: v_i RMS-normalized, times a learned gain that starts at
        # the RMS of the LLM's own input embeddings (docs/design.md, "Referring")
        if token_scale not in ("free", "embedding"):
            raise ValueError(f"token_scale must be 'free' or 'embedding', not {token_scale!r}")
        self.token_gain = nn.Parameter(torch.tensor(_embedding_rms(llm))) if token_scale == "embedding" else None
        # [ours] class-slot logits also score the instruction's own <ck> in context (zero at init)
        self.class_pointer = nn.Linear(H, H, bias=False)
        nn.init.zeros_(self.class_pointer.weight)
        # [ours] the name's words weighed by a learned score rather than alike (name_pool.py)
        self.name_pool = NamePool(H) if name_pool else None
        # [ours] a name's words also score each group's box (name_location.py; "the leftmost circle")
        if name_location_from and not name_location:
            raise ValueError("model.name_location_from holds model.name_location at zero for part of the run: "
                             "it needs model.name_location=true")
        if name_location_relative and not name_location:
            raise ValueError("model.name_location_relative changes the features of model.name_location: it needs "
                             "model.name_location=true")
        self.name_location = (NameLocation(H, start=name_location_from, relative=name_location_relative)
                              if name_location else None)
        # [ours] text answers may read the image tokens directly (readout.py; docs/design.md)
        self.text_readout = TextReadout(H, pixel_dim=d) if text_readout else None
        # [ours] each image token matched to an object names it in words, read through the
        # LLM's own head at one layer (docs/design.md, "Token naming"); the weight, 0 = off
        num_layers = len(llm.decoder.layers)
        if not 0 <= token_names_layer <= num_layers:
            raise ValueError(f"token_names_layer must be in 0..{num_layers} (0: the LLM's input, k: the output of "
                             f"its k-th layer), not {token_names_layer}")
        self.token_names, self.token_names_layer = float(token_names), int(token_names_layer)
        if token_sides and self.token_names <= 0:
            raise ValueError("model.token_sides adds the image side to what token naming teaches: it needs "
                             "model.token_names > 0 (token naming), which is off")
        # true: the side words are two more words of the name, each an equal share; a number in
        # (0, 1): their share of the target together, the name's words sharing the rest
        if not isinstance(token_sides, bool) and not 0 <= float(token_sides) < 1:
            raise ValueError(f"model.token_sides must be true/false or the side words' share of the naming "
                             f"target, in [0, 1), not {token_sides}")
        self.token_sides = token_sides if isinstance(token_sides, bool) else float(token_sides)
        # [ours] text answers may copy a word from the image token their question names
        # (named_copy.py; docs/design.md, "Copy from named tokens"): it reads token naming's layer
        if named_copy and self.token_names <= 0:
            raise ValueError("model.named_copy reads what the LLM's head names at the image tokens: it needs "
                             "model.token_names > 0 (token naming), which is off")
        if count_loss and not copy_count:
            raise ValueError("model.count_loss teaches the count of model.copy_count, which is off")
        # [ours] the count's own distribution also learns the number answers directly, weighted
        # (docs/design.md, "Counting from the tokens"): else a count the model has turned off
        # early (its strength below 0) is never taught
        self.count_loss = float(count_loss)
        self.named_copy = build_named_copy(llm.tokenizer, llm.vocab.image, H, named_copy=named_copy,
                                           where_feats=d // 2 if copy_where else 0, copy_count=copy_count,
                                           copy_follow=copy_follow, count_exist=count_exist,
                                           copy_stay=copy_stay)
        # [ours] a class slot also reads what the head calls each group's image token (name_fit.py)
        if name_fit and self.named_copy is None:
            raise ValueError("model.name_fit scores a name's words as token naming says them at the image tokens, and "
                             "the named copy keeps which words those are: it needs model.named_copy=true")
        if name_fit_gain is not None and not name_fit:
            raise ValueError("model.name_fit_gain holds name_fit's gain: it needs model.name_fit=true")
        self.name_fit = NameFit(held=name_fit_gain) if name_fit else None
        # [ours] a class loss on the tokenizer (token_classes.py); the weight, 0 = off (None)
        self.token_classes = TokenClasses.weighted(token_classes, d, H)
        self.none_weight = none_weight
        # [ours] a referring answer's group taught to outscore the other groups (losses.answer_loss)
        if referent_loss < 0:
            raise ValueError(f"model.referent_loss is a loss weight, >= 0, not {referent_loss}")
        self.referent_loss = float(referent_loss)
        if group_matching not in ("tokenizer", "hungarian"):
            raise ValueError(f"group_matching must be 'tokenizer' or 'hungarian', not {group_matching!r}")
        self.group_matching = group_matching
        self.loss_weights = dict(loss_weights or {})
        self.lockstep = False  # set under FSDP (engine.distributed.wrap_model): same LLM passes on every rank

    @property
    def num_queries(self) -> int:
        return self.image_tokenizer.num_queries

    def _image_tokens(self, batch: dict):
        toks = self.image_tokenizer(batch["images"], batch["pixel_mask"], batch["instructions"])
        anchors = toks.points.detach()  # answers are offsets from l_i; l_i itself is trained by its own loss
        v = self.token_proj(toks.embeds) + self.loc_embed(sine_embed(anchors, self.image_tokenizer.d_model // 2))
        if self.scene_proj is not None:
            v = v + self.scene_proj(toks.scene)[:, None]
        if self.token_gain is not None:
            v = _rms(v) * self.token_gain.to(v.dtype)
        return toks, anchors, v

    def _prior(self, toks) -> torch.Tensor | None:
        """(B, M, 4) each token's prior box (box_prior.py), or None without ``model.box_prior``."""
        return None if self.box_head is None else prior_boxes(self.box_head, toks.embeds, toks.points)

    def _structured_groups(self, requests) -> dict[int, list[int]]:
        by_points = defaultdict(list)
        for b, r in enumerate(requests):
            if r.structured:
                by_points[r.num_points].append(b)
        return by_points

    def _slot_logits(self, prefix, valid, ids, v, anchors, idx, num_points, requests, boxes=None):
        """Class-slot logits (b, M, Kmax+1) with absent classes at -inf, location logits (b, M, 2N, 1025).

        A class slot's logit for <ck> is the head row of <ck> plus a pointer term: the slot's
        hidden state against what this instruction binds to <ck>: the LLM's hidden state at the
        <ck> (which has read the name written before it) plus the mean input embedding of the
        name itself. A pretrained LLM binds names to tokens in context by itself; a small random
        one does not learn to within a CPU budget, and with the pointer it does [ours,
        docs/design.md]. Both parts are RMS-normalized before they are added: the LLM's
        output state has a norm near sqrt(H), a mean of input embeddings one near 0.02 sqrt(H),
        and unscaled the name counted for 1 % of the sum, so an instruction's class slot
        could hardly tell one referring expression from another (docs/design.md, "Class slots").
        """
        vocab = self.llm.vocab
        Lp = int(valid[idx].sum(1).max())
        with self._layer_output() if self.name_fit is not None else nullcontext({}) as seen:
            hidden, prefix_hidden = decode_groups(self.llm, prefix[idx, :Lp], valid[idx, :Lp], v[idx],
                                                  vocab.slot_ids(num_points), dense=self.dense_groups)
        hidden, prefix_hidden = hidden.float(), prefix_hidden.float()  # heads in float32 (bf16 LLM bases)
        kmax = max(len(requests[b].classes) for b in idx)
        cls_ids = torch.tensor([vocab.class_id(k) for k in range(kmax)] + [vocab.none], device=v.device)
        cls_logits = self.llm.logits(hidden[:, :, 0], cls_ids)  # (b, M, Kmax+1)
        positions = (ids[idx, :Lp, None] == cls_ids[None, None, :kmax]).float().argmax(1)  # (b, Kmax)
        ctx = prefix_hidden.gather(1, positions[..., None].expand(-1, -1, prefix_hidden.shape[-1]))  # (b, Kmax, H)
        ctx = _rms(ctx) + _rms(self._name_embeddings([requests[b].classes for b in idx], kmax))
        pointer = torch.einsum("bmh,bkh->bmk", hidden[:, :, 0], self.class_pointer(ctx))
        loc_ids = torch.arange(vocab.loc0, vocab.loc0 + 2 * LOC_HALF + 1, device=v.device)
        loc_logits = self.llm.logits(hidden[:, :, 1:], loc_ids)  # (b, M, 2N, 1025)
        if self.name_location is not None:
            # each group's expected answer, as the losses read it (anchor + expected offsets)
            points = answer_anchors(anchors[idx], None if boxes is None else boxes[idx], num_points)
            points = points + expected_offsets(loc_logits)
            words = self._name_embeddings([requests[b].classes for b in idx], kmax, unit=True)
            fit = cls_logits[..., :kmax] + pointer - cls_logits[..., kmax:]  # each name against "none"
            pointer = pointer + self.name_location(words, points.view(len(idx), -1, num_points, 2), fit)
        if self.name_fit is not None:
            states = seen.get("out", prefix[idx])[:, :Lp]  # token naming's layer (0: the LLM's input)
            at = ids[idx, :Lp] == vocab.image  # M per row, in order
            named = self._head_words(states[at].view(len(idx), -1, states.shape[-1])).float().log_softmax(-1)
            pointer = pointer + self.name_fit(named, *self._name_words([requests[b].classes for b in idx], kmax))
        cls_logits = torch.cat([cls_logits[..., :kmax] + pointer, cls_logits[..., kmax:]], -1)
        for row, b in enumerate(idx):
            cls_logits[row, :, len(requests[b].classes) : kmax] = float("-inf")
        return cls_logits, loc_logits

    def _questions(self, instructions: list[str]) -> torch.Tensor:
        """(B, H) what a text request asks, for the text readout: the mean word embedding of
        its instruction's last line (a conversation's current question; a caption request)."""
        return self._mean_embeddings([question_line(t) for t in instructions])

    def _read(self, hidden: torch.Tensor, question: torch.Tensor, tokens: tuple) -> torch.Tensor:
        """``hidden`` (B, T, H) after the text readout of ``tokens`` (v (B, M, H), pixels
        (B, M, C) or None), or as it is without a readout."""
        return hidden if self.text_readout is None else self.text_readout(hidden, question, *tokens)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        requests, targets = batch["requests"], batch["targets"]
        toks, anchors, v = self._image_tokens(batch)
        boxes = self._prior(toks)
        # the tokenizer learns from samples that name their objects (not from captions or answers)
        rows = [b for b, t in enumerate(targets) if t.get("centers") is not None]
        assignment: dict[int, tuple] = {}
        matched: dict[int, tuple] = {}  # row -> (tokens, objects) of the tokenizer's matching
        losses = {}
        groups = self._structured_groups(requests)
        text_rows = [b for b, r in enumerate(requests) if not r.structured]
        # a sampled answer (engine/scst.py) brings the ids it was drawn as; others are tokenized
        answers = [list(targets[b]["ids"]) + [self.llm.tokenizer.eos_token_id] if targets[b].get("ids") is not None
                   else self._answer_ids(targets[b]["text"]) for b in text_rows]
        # the earlier answers of a conversation, inside the instruction, are learned as well
        context = [
            span_positions(self.llm, batch["instructions"][b], targets[b].get("context_spans") or [], v.shape[1])
            for b in text_rows
        ]
        # the text readout and the copy read each earlier answer with its own question, not the last one
        turns = None if self.text_readout is None and self.named_copy is None else [
            [(question_line(batch["instructions"][b][:a]),
              span_positions(self.llm, batch["instructions"][b], [(a, e)], v.shape[1]))
             for a, e in targets[b].get("context_spans") or []]
            for b in text_rows
        ]
        # Normalizers over all processes, in one all-reduce on every step before any branch and
        # any LLM pass (under FSDP a pass is a series of collectives too): every rank issues the
        # same collectives in the same order, so none waits alone.
        boxed = [b for b in rows if requests[b].structured and boxes is not None]  # the prior learns from these
        tok_norm, norm, text_norm, box_norm = global_counts([
            sum(len(targets[b]["centers"]) for b in rows),
            sum(len(targets[b]["labels"]) for idx in groups.values() for b in idx),
            sum(len(a) for a in answers) + sum(len(c) for c in context),
            sum(len(targets[b]["coords"]) for b in boxed),
        ], v.device)
        norm, text_norm = max(norm, 1.0), max(text_norm, 1.0)
        if rows:
            losses, assigned = tokenizer_loss(
                toks.layer_logits[:, rows], toks.layer_points[:, rows], [targets[b]["centers"].to(v.device) for b in rows],
                num=tok_norm,
            )
            matched = dict(zip(rows, assigned))
            if self.group_matching == "tokenizer":
                # group i answers for the object its image token was matched to [ours]
                assignment = matched
        if boxes is not None:
            losses.update(matched_prior_loss(boxes, targets, matched, boxed, box_norm))
        if self.token_classes is not None:
            losses["loss_tok_cls"] = self.token_classes.matched_loss(
                toks.embeds, requests, targets, matched, lambda k, n: self._name_embeddings(k, n, unit=True)) / norm
        prefix, valid, ids = splice_image_tokens(self.llm, batch["instructions"], v)
        extent = image_extent(batch["pixel_mask"]) if self.token_sides else None
        kinds = sorted(groups) + ([TEXT_PASS] if text_rows else [])
        sums: dict[str, torch.Tensor] = defaultdict(lambda: v.new_zeros(()))
        idle = v.new_zeros(())
        for kind in self._pass_order(kinds):
            if kind == TEXT_PASS and text_rows:
                losses["loss_text"] = self._text_loss(prefix, valid, text_rows, answers, ids, context,
                                                      v=(v, toks.pixels), instructions=batch["instructions"],
                                                      turns=turns, objectness=toks.layer_logits[-1],
                                                      anchors=anchors,
                                                      weights=[targets[b].get("weight", 1.0) for b in text_rows],
                                                      ) / text_norm
            elif kind in groups:
                self._structured_losses(sums, prefix, valid, ids, v, anchors, groups[kind], kind, requests, targets,
                                        assignment, matched, extent, boxes)
            else:  # a pass another rank needs and this batch does not: it counts zero
                idle = idle + self._idle_pass(prefix, valid, ids, v, anchors, kind, boxes)
        for k, val in sums.items():
            losses[k] = val / norm
        # Every trainable tensor takes part in every step, whatever the batch holds: FSDP
        # reduce-scatters the same gradients on every rank, so a part this batch left unused
        # (the tokenizer's heads without boxes, the class pointer without structured rows)
        # gets an exact zero rather than no gradient at all.
        if not rows:
            losses["loss_tok_obj"] = 0.0 * (toks.layer_logits.sum() + toks.layer_points.sum())
        if not sums:
            pool = [p for m in (self.name_pool, self.name_location, self.name_fit) if m is not None for p in m.parameters()]
            losses["loss_cls"] = 0.0 * sum((p.sum() for p in pool), self.class_pointer.weight.sum())
        text_parts = [m for m in (self.text_readout, self.named_copy) if m is not None]
        if text_parts and not text_rows:
            losses["loss_text"] = 0.0 * sum(p.sum() for m in text_parts for p in m.parameters())
        if self.lockstep:
            losses["loss_cls"] = losses["loss_cls"] + idle
        for k in list(losses):
            losses[k] = losses[k] * self.loss_weights.get(k, 1.0)
        losses["loss"] = sum(losses.values())
        return losses

    def _structured_losses(self, sums, prefix, valid, ids, v, anchors, idx, n_pts, requests, targets, assignment,
                           matched, extent=None, boxes=None):
        """One LLM pass for the rows of ``idx`` (all asking for ``n_pts`` points); adds their
        summed box/polygon/class losses (and token-naming loss) into ``sums``. ``extent`` (B, 2)
        the image's share of the canvas, where token naming also says each object's side."""
        with self._layer_output() as seen:
            cls_logits, loc_logits = self._slot_logits(prefix, valid, ids, v, anchors, idx, n_pts, requests, boxes)
        if self.token_names > 0:
            states = seen.get("out", prefix[idx])  # layer 0: the LLM's input
            sums["loss_names"] = sums["loss_names"] + self.token_names * self._naming_loss(
                states, ids[idx], [targets[b].get("names") for b in idx], [matched.get(b) for b in idx],
                None if extent is None else [side_words(targets[b]["centers"], extent[b]) for b in idx])
        for row, b in enumerate(idx):
            K = len(requests[b].classes)
            keep = torch.cat([torch.arange(K), torch.tensor([cls_logits.shape[-1] - 1])]).to(v.device)
            t = targets[b]
            parts, _ = answer_loss(
                cls_logits[row][:, keep],
                loc_logits[row],
                answer_anchors(anchors[b], None if boxes is None else boxes[b], n_pts),
                t["labels"].to(v.device),
                t["coords"].to(v.device),
                is_box=n_pts == 2,
                assignment=assignment.get(b),
                none_weight=self.none_weight,
                w_referent=self.referent_loss,
                referring=bool(t.get("referring")),
                free_start=self.polygon_free_start,
            )
            for k, val in parts.items():
                sums[k] = sums[k] + val

    def _pass_order(self, kinds: list[int]) -> list[int]:
        """The LLM passes this step makes: this batch's own (one per point count, then text), or
        under FSDP (``lockstep``) the union over all ranks, in one order everywhere, since each
        pass gathers every layer's shards from all ranks."""
        if not self.lockstep:
            return kinds
        everyone: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, kinds)
        return sorted({k for ks in everyone for k in ks})

    def _idle_pass(self, prefix, valid, ids, v, anchors, kind: int, boxes=None) -> torch.Tensor:
        """A pass of ``kind`` on the first sample with a stand-in request, times zero."""
        if kind == TEXT_PASS:
            return 0.0 * self._text_loss(prefix, valid, [0], [[self.llm.tokenizer.eos_token_id]], ids, v=(v, None),
                                         instructions=[""] * v.shape[0])
        stand_in = {0: Request(kind="boxes" if kind == 2 else "polygons", classes=["object"], num_points=kind)}
        cls_logits, loc_logits = self._slot_logits(prefix, valid, ids, v, anchors, [0], kind, stand_in, boxes)
        return 0.0 * (cls_logits.sum() + loc_logits.sum())

    @torch.no_grad()
    def predict(self, batch: dict, *, max_new_tokens: int = 64, temperature: float = 0.0,
                generator: torch.Generator | None = None, samples: int = 1, no_repeat_ngram: int = 0,
                location_window: int = 0) -> list[dict]:
        """Per sample: structured -> {"labels" (M,), "scores" (M,), "points" (M, N, 2) canvas-normalized,
        "probs" (M, K): each group's probability of each of the instruction's classes,
        "objectness" (M,): the image tokenizer's own score of each token, which for a grounding
        instruction is trained on the referred object alone}; text -> {"text": str}, greedy, or
        sampled at ``temperature`` > 0 (from ``generator``); with ``samples`` > 1 (sampled only)
        also "texts", that many drawn together from one pass over the prefix ("text" the first),
        and "token_ids", the ids each was drawn as. ``no_repeat_ngram`` n > 0: no text repeats a
        run of n tokens (the word that would close a repeat is never chosen). ``location_window``
        w > 0: a coordinate is the expected offset over the w bins either side of its likeliest
        bin (``losses.read_offsets``), not that bin alone."""
        if samples > 1 and temperature <= 0:
            raise ValueError(f"{samples} samples of each text need a temperature above 0, not {temperature}")
        requests = batch["requests"]
        toks, anchors, v = self._image_tokens(batch)
        boxes = self._prior(toks)
        prefix, valid, ids = splice_image_tokens(self.llm, batch["instructions"], v)
        out: list[dict] = [{} for _ in requests]
        for n_pts, idx in self._structured_groups(requests).items():
            cls_logits, loc_logits = self._slot_logits(prefix, valid, ids, v, anchors, idx, n_pts, requests, boxes)
            probs = cls_logits.softmax(-1)[..., :-1]  # drop no-object
            scores, labels = probs.max(-1)  # (b, M)
            offsets = read_offsets(loc_logits, location_window)  # (b, M, 2N)
            for row, b in enumerate(idx):
                pts = answer_anchors(anchors[b], None if boxes is None else boxes[b], n_pts) + offsets[row]
                out[b] = {"labels": labels[row], "scores": scores[row], "points": pts.view(-1, n_pts, 2),
                          "probs": probs[row], "objectness": toks.layer_logits[-1, b].sigmoid()}
        for b, r in enumerate(requests):
            if not r.structured:
                n = int(valid[b].sum())
                common = dict(image_tokens=(v[b : b + 1], toks.pixels[b : b + 1]), instruction=batch["instructions"][b],
                              ids=ids[b, :n], objectness=toks.layer_logits[-1, b], anchors=anchors[b],
                              temperature=temperature, generator=generator, no_repeat_ngram=no_repeat_ngram)
                if samples > 1:
                    drawn = self.generate_texts(prefix[b : b + 1, :n], max_new_tokens, samples=samples, with_ids=True,
                                                **common)
                    out[b] = {"text": drawn[0][0], "texts": [t for t, _ in drawn], "token_ids": [i for _, i in drawn]}
                else:
                    out[b] = {"text": self.generate_text(prefix[b : b + 1, :n], max_new_tokens, **common)}
        return out
