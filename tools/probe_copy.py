"""Does the question find its object among the named image tokens? A probe for token naming
and the copy from named tokens (docs/design.md, "Copy from named tokens").

    python tools/probe_copy.py CHECKPOINT [--conversations 150] [--data-root data/shapes] [--json OUT]

For each "What color is the X?" and "What shape is the Y object?" question of the first
``--conversations`` val conversations (the built-in shapes' LLaVA file), the LLM's head is read
at each image token at the layer token naming trains (``model.token_names_layer``), and the
token that fits the question best is picked in three ways:

- ``all_words``: the mean log-probability of every word token of the question;
- ``name_words``: of the question's name words only (the words of the objects' names: the val
  instances' categories and attributes);
- ``name_words+objectness``: that plus the image tokenizer's log-objectness (the copy's own
  pointer, with its weights at their starting values).

Only questions that name an object (hold a name word) are scored for the pointer;
``KIND/questions`` counts a kind's questions and ``KIND/names_an_object`` is the share that do. A pick is right when
the head's top colour word (top shape word) at the picked token is the answer. ``some_token`` is the share of questions where any token names the answer at all.
For "left or right?" and "top or bottom?" questions, ``position/pointed_on_answer_side`` is
the share where the token the copy's pointer picks lies on the answer's side of the canvas.
For a model built with ``model.named_copy``, also the copy's mean mass on the answer's first
token and its mean strength beta at the first answer position, per question type; with the
count (``model.copy_count``), ``count/count_right``, the share of count questions whose most
likely number under the count is the answer, and its strength ``count/count_strength``;
``exist/count_says_exist_right``, the share of existence questions ("is there a blue star?")
whose answer is "yes" exactly when the count's P(n = 0) is under one half.
Needs a checkpoint trained with token naming (``model.token_names`` > 0).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

# position answers: (axis of l_i, whether the answer means below one half on it)
SIDES = {"left": (0, True), "right": (0, False), "top": (1, True), "bottom": (1, False)}


def _kind(question: str) -> str:
    for prefix, kind in (("What color", "color"), ("What shape", "shape"), ("How many", "count"), ("Is there", "exist")):
        if question.startswith(prefix):
            return kind
    return "position"


def probe(model, cfg, conversations: int, data_root: str | None = None) -> dict:
    from visionllm.data.coco import object_name
    from visionllm.data.llava import LlavaInstruct
    from visionllm.data.transforms import collate
    from visionllm.modeling.decoding import splice_image_tokens
    from visionllm.modeling.readout import rms
    from visionllm.modeling.visionllm import question_line
    from visionllm.tasks import vqa

    tok = model.llm.tokenizer
    if data_root:  # the built-in layout under another root (the checkpoint's run may have used another)
        root = Path(data_root)
        ann_file, vqa_file, image_root = root / "annotations/instances_val2017.json", root / "llava/llava_instruct_val.json", root
    else:
        ann_file, vqa_file, image_root = cfg.data.val.detection.ann_file, cfg.data.val.vqa.json_file, cfg.data.val.vqa.image_root
    coco = json.loads(Path(ann_file).read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    colours = sorted({w for a in coco["annotations"] for w in a.get("attributes") or []})
    shapes = sorted(set(cats.values()))
    names = {object_name({"category_name": cats[a["category_id"]], "attributes": a.get("attributes") or []})
             for a in coco["annotations"]}
    name_words = {w for n in names for w in model._word_ids(n)}

    def first_ids(words):  # each word's first token, as names say it (after a space)
        return torch.tensor([model._word_ids(w)[0] for w in words])

    word_ids = {"color": (colours, first_ids(colours)), "shape": (shapes, first_ids(shapes))}
    reader = LlavaInstruct(json_file=vqa_file, image_root=image_root)
    samples = [s for i in range(min(conversations, len(reader))) for s in vqa.eval_samples(reader[i], image_size=cfg.data.image_size)]
    hits: dict = defaultdict(list)
    counts: dict = defaultdict(int)  # questions per kind
    for k in range(0, len(samples), 16):
        chunk = samples[k : k + 16]
        batch = collate(chunk)
        with torch.no_grad():
            toks, anchors, v = model._image_tokens(batch)
            prefix, valid, ids = splice_image_tokens(model.llm, batch["instructions"], v)
            bos = model.llm.embed(torch.tensor([model.llm.vocab.bos]))
            for b, s in enumerate(chunk):
                kind = _kind(s["meta"]["question"])
                n = int(valid[b].sum())
                embeds = torch.cat([prefix[b, :n], bos])[None]
                with model._layer_output() as seen:
                    out = model.llm.decoder(inputs_embeds=embeds, use_cache=False)
                states = seen.get("out", embeds)[0]
                at = (ids[b, :n] == model.llm.vocab.image).nonzero()[:, 0]
                named = model._head_words(states[at]).log_softmax(-1)  # (M, V)
                asked = question_line(batch["instructions"][b])
                q = model._word_ids(asked)
                qn = [w for w in q if w in name_words]
                counts[kind] += 1
                hits[kind, "names_an_object"].append(bool(qn))
                fits = {}
                if qn:  # the copy's own pointer is the last: name words plus objectness
                    fits = {"all_words": named[:, q].mean(-1), "name_words": named[:, qn].mean(-1)}
                    fits["name_words+objectness"] = fits["name_words"] + torch.nn.functional.logsigmoid(
                        toks.layer_logits[-1, b])
                if kind in word_ids and fits:
                    words, wid = word_ids[kind]
                    top = [words[int(i)] for i in named[:, wid].argmax(-1)]  # each token's word
                    for how, fit in fits.items():
                        hits[kind, how].append(top[int(fit.argmax())] == s["meta"]["answer"])
                    hits[kind, "some_token"].append(s["meta"]["answer"] in top)
                side = SIDES.get(s["meta"]["answer"])
                if kind == "position" and side and fits:
                    # is the pointed-at token (the copy's own pointer) on the answer's side?
                    axis, below = side
                    where = float(anchors[b, int(fits["name_words+objectness"].argmax()), axis])
                    hits[kind, "pointed_on_answer_side"].append((where < 0.5) == below)
                copy = model.named_copy
                if copy is not None:
                    q_obj = model._questions([batch["instructions"][b]]) if model.text_readout is not None else None
                    hidden = model._read(out.last_hidden_state[:, -1:], q_obj, (v[b : b + 1], toks.pixels[b : b + 1]))[0]
                    log_c, read = model._copy_tables(states, ids[b, :n], v[b], toks.layer_logits[-1, b], [asked])[asked][:2]
                    h = rms(hidden + read)
                    f = torch.sigmoid(copy.form(h))
                    c = f * log_c[0].exp() + (1 - f) * log_c[1].exp()
                    answer = tok(s["meta"]["answer"], add_special_tokens=False)["input_ids"][0]
                    hits[kind, "copy_mass_on_answer"].append(float(c[0, answer]) if answer < c.shape[-1] else 0.0)
                    hits[kind, "copy_strength"].append(float(copy.strength(h)))
                    if copy.count_ids is not None and kind == "count":
                        bare = copy.count_ids[:, 0]
                        said = log_c[2][bare.clamp_min(0)].masked_fill(bare < 0, float("-inf"))
                        hits[kind, "count_right"].append(str(int(said.argmax())) == s["meta"]["answer"])
                        hits[kind, "count_strength"].append(float(copy.count_strength(h)))
                    if copy.count_ids is not None and kind == "exist" and copy.count_ids[0, 0] >= 0:
                        # would "yes" exactly when the count says more than none be right?
                        none = float(log_c[2][copy.count_ids[0, 0]].exp())
                        hits[kind, "count_says_exist_right"].append((none < 0.5) == (s["meta"]["answer"] == "yes"))
    return {f"{kind}/{how}": round(sum(map(float, v)) / len(v), 3) for (kind, how), v in sorted(hits.items())} | {
        f"{kind}/questions": n for kind, n in sorted(counts.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--conversations", type=int, default=150)
    ap.add_argument("--data-root", default=None, help="the val sets of this built-in data set root, not the checkpoint's")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    from visionllm.engine.checkpoint import load_model

    model, cfg = load_model(args.checkpoint)
    if getattr(model, "token_names", 0) <= 0:
        raise SystemExit(f"{args.checkpoint} was not trained with token naming (model.token_names): nothing to probe")
    result = probe(model, cfg, args.conversations, args.data_root)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
