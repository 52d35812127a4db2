"""Captioning with a length wish: templates, the wish chosen to fit the answer, BLEU/CIDEr."""

import random

import pytest
import torch
from omegaconf import OmegaConf

from visionllm.data.captions import KarpathyCaptions
from visionllm.engine import tasks
from visionllm.evaluation.caption import caption_scores, consensus, evaluate_caption
from visionllm.tasks import caption
from visionllm.tasks.instructions import Request, parse_instruction

BANKS = {"brief": caption.BRIEF_TEMPLATES, "about": caption.ABOUT_TEMPLATES, "detailed": caption.DETAILED_TEMPLATES}


@pytest.fixture(scope="module")
def train_records(shapes_root):
    """Every record of the built-in training split (images decoded once for the module)."""
    train = KarpathyCaptions(root=shapes_root, split_file=shapes_root / "karpathy/dataset_coco.json", split="train")
    return train, [train[i] for i in range(len(train))]


@pytest.fixture(scope="module")
def test_reader(shapes_root):
    return KarpathyCaptions(root=shapes_root, split_file=shapes_root / "karpathy/dataset_coco.json", split="test")


class Oracle(torch.nn.Module):
    """Answers "about N words" with exactly N words, anything else with the image's first
    reference (or a fixed unrelated sentence when ``wrong``)."""

    def __init__(self, references: dict, wrong: bool = False):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.references, self.wrong = references, wrong

    def predict(self, batch):
        out = []
        for text, meta in zip(batch["instructions"], batch["meta"]):
            n = caption.requested_length(text)
            if n is not None:
                out.append({"text": " ".join(["shape"] * n)})
            elif self.wrong:
                out.append({"text": "a dog runs across the green grass"})
            else:
                out.append({"text": self.references[meta["image_id"]][0]})
        return out


@pytest.mark.parametrize("kind", list(BANKS))
def test_templates_parse_as_text(kind):
    assert len(BANKS[kind]) >= 10
    for t in BANKS[kind]:
        text = caption.make_instruction(kind, n=13, template=t)
        assert parse_instruction(text) == Request(kind="text")
        assert caption.requested_length(text) == (13 if kind == "about" else None), text


def test_requested_length():
    assert caption.requested_length("Describe <image> in about 7 words.") == 7
    assert caption.requested_length("A 12-word caption of <image>, please") == 12
    assert caption.requested_length("Describe <image> in detail.") is None
    with pytest.raises(ValueError, match="kind"):
        caption.make_instruction("long")


def test_training_wish_fits_the_answer(train_records):
    rng = random.Random(0)
    kinds = set()
    for rec in train_records[1]:
        for _ in range(3):
            s = caption.training_sample(rec, image_size=64, rng=rng)
            assert set(s) == {"image", "pixel_mask", "instruction", "request", "target", "meta"}
            text, words = s["target"]["text"], len(s["target"]["text"].split())
            assert text in rec["captions"] and s["request"] == Request(kind="text") == parse_instruction(s["instruction"])
            kind = "brief" if words <= 8 else "detailed" if words >= 16 else "about"
            kinds.add(kind)
            bank = [t.format(n=words) for t in BANKS[kind]]
            assert s["instruction"] in bank
            if kind == "about":
                assert caption.requested_length(s["instruction"]) == words
    assert kinds == set(BANKS)


def test_consensus_target_keeps_the_kind_and_picks_the_agreed_reference(train_records):
    train, records = train_records
    agree = caption.consensus_from_reader("consensus", train)
    assert caption.consensus_from_reader("random", train) is None
    rng_a, rng_b = random.Random(0), random.Random(0)
    changed = 0
    for rec in records:
        refs = [c.strip() for c in rec["captions"]]
        scores = agree.scores(refs)
        for _ in range(3):
            a = caption.training_sample(rec, image_size=64, rng=rng_a)
            b = caption.training_sample(rec, image_size=64, rng=rng_b, consensus=agree)
            kind = caption.length_kind(a["target"]["text"])
            # the same draw decides the kind; the target is the best-agreed reference of that kind
            assert caption.length_kind(b["target"]["text"]) == kind and b["target"]["text"] in refs
            same_kind = [j for j, c in enumerate(refs) if caption.length_kind(c) == kind]
            assert scores[refs.index(b["target"]["text"])] == max(scores[j] for j in same_kind)
            if kind == "about":
                assert caption.requested_length(b["instruction"]) == len(b["target"]["text"].split())
            changed += a["target"]["text"] != b["target"]["text"]
    assert changed > 0
    # a reference the others share scores above one they do not
    toy = caption.Consensus([["a red circle", "a red circle on grey", "two blue dogs"], ["a cat"], ["one green star"]])
    s = toy.scores(["a red circle", "a red circle on grey", "two blue dogs"])
    assert s[0] > s[2] and s[1] > s[2]
    with pytest.raises(ValueError, match="task.caption.target"):
        caption.consensus_from_reader("best", train)
    with pytest.raises(ValueError, match="cannot list its captions"):
        caption.consensus_from_reader("consensus", object())


def test_references_at_positions_are_the_only_targets(train_records):
    train, records = train_records
    rng = random.Random(0)
    seen = set()
    for rec in records:
        refs = [c.strip() for c in rec["captions"]]
        for _ in range(4):
            s = caption.training_sample(rec, image_size=64, rng=rng, positions=(1, 4))
            # only references 1 and 4 are learned; the wish still fits the one drawn; all are kept for rewards
            assert s["target"]["text"] in (refs[1], refs[4])
            seen.add(refs.index(s["target"]["text"]))
            assert s["instruction"] in [t.format(n=len(s["target"]["text"].split()))
                                        for t in BANKS[caption.length_kind(s["target"]["text"])]]
            assert s["target"]["references"] == refs
    assert seen == {1, 4}
    # positions past an image's list are skipped; none left is a clear error
    rec = {"image_id": 7, "captions": ["a red circle.", "two stars."]}
    assert caption.learned_references(rec, (1, 5)) == ["two stars."]
    with pytest.raises(ValueError, match=r"image 7 has no caption to learn from at positions \[5\]"):
        caption.learned_references(rec, (5,))
    assert caption.check_positions(None) is None and caption.check_positions([0, 1, 4]) == (0, 1, 4)
    for bad in ([], [1, 1], [-1], ["a"], "1", 3, [True]):
        with pytest.raises(ValueError, match="task.caption.references"):
            caption.check_positions(bad)
    # the option reaches the training sampler from the config
    cfg = OmegaConf.create({"task": {"caption": {"references": [4]}}})
    build = tasks._builder("caption", tasks.task_options(cfg, "caption"), 64, None, train)
    rec = records[0]
    assert all(build(rec, random.Random(k))["target"]["text"] == rec["captions"][4].strip() for k in range(5))


def test_scores_oracle_and_wrong(test_reader):
    refs = {e["cocoid"]: [s["raw"].strip() for s in e["sentences"]] for e in test_reader.entries}
    metrics, results, table = evaluate_caption(
        Oracle(refs), test_reader, image_size=32, batch_size=3, progress=False, instruction="Describe <image> briefly."
    )
    assert {"caption_BLEU-4", "caption_CIDEr", "caption_length_error"} <= set(metrics)
    assert metrics["caption_BLEU-4"] > 0.9 and metrics["caption_CIDEr"] > 1.0, table
    assert metrics["caption_length_error"] == 0.0
    assert sorted(r["image_id"] for r in results) == sorted(refs) and all(set(r) == {"image_id", "caption"} for r in results)
    wrong, _, _ = evaluate_caption(
        Oracle(refs, wrong=True), test_reader, image_size=32, batch_size=3, progress=False, instruction="Describe <image> briefly."
    )
    assert wrong["caption_BLEU-4"] < 0.1 and wrong["caption_CIDEr"] < 0.2
    assert wrong["caption_length_error"] == 0.0  # it keeps the length wish, nothing else
    # the default instruction asks for about ten words
    words, _, _ = evaluate_caption(Oracle(refs), test_reader, image_size=32, batch_size=3, progress=False, lengths=())
    assert words["caption_BLEU-4"] < metrics["caption_BLEU-4"]


def test_eval_instruction_from_the_config(test_reader):
    """task.caption.eval_instruction sets the scored pass's request; null keeps about ten words."""
    refs = {e["cocoid"]: [s["raw"].strip() for s in e["sentences"]] for e in test_reader.entries}
    cfg = OmegaConf.create({"data": {"image_size": 32}, "task": {"caption": {"eval_instruction": None}}})
    words, _, _ = tasks.evaluate(Oracle(refs), cfg, "caption", test_reader, batch_size=3, progress=False)
    cfg.task.caption.eval_instruction = "Describe <image> in detail."
    detail, results, _ = tasks.evaluate(Oracle(refs), cfg, "caption", test_reader, batch_size=3, progress=False)
    assert detail["caption_CIDEr"] > 1.0 > words["caption_CIDEr"]
    assert all(r["caption"] == refs[r["image_id"]][0] for r in results)
    cfg.task.caption.eval_instruction = "Describe the image in detail."
    with pytest.raises(ValueError, match="must hold <image>"):
        tasks.evaluate(Oracle(refs), cfg, "caption", test_reader, batch_size=3, progress=False)


def test_odd_captions_keep_lines_aligned():
    refs = {1: ["a red circle on a grey background"], 2: ["two blue squares"], 3: ["a green star"], 4: ["one shape"]}
    preds = {1: "a red circle\ron a grey\u2028background", 2: "two blue squares", 3: "a green star", 4: ""}
    scores = caption_scores(refs, preds)
    assert scores["caption_BLEU-4"] > 0.8 and scores["caption_CIDEr"] > 5.0  # only the empty one misses


def test_consensus_keeps_the_caption_the_others_agree_with():
    pool = {
        1: ["a dog runs on grass", "a red circle on a grey background", "a red circle on grey", "a red circle"],
        2: ["two blue squares on white", "two blue squares", "a cat sleeps", "two blue squares and a star"],
        3: ["a green star", "a green star on black", "one green star", "a tree in the park"],
    }
    picked = consensus(pool)
    assert picked[1].startswith("a red circle") and picked[2].startswith("two blue squares")
    assert picked[3] != "a tree in the park"
    assert consensus({1: ["only one"], 2: ["another"]}) == {1: "only one", 2: "another"}


class Sampler(Oracle):
    """Greedy: an unrelated sentence; sampled: the image's first reference, or on one draw in
    four an unrelated one (the generator decides)."""

    def predict(self, batch, temperature=0.0, generator=None):
        out = []
        for meta in batch["meta"]:
            good = temperature > 0 and float(torch.rand((), generator=generator)) > 0.25
            out.append({"text": self.references[meta["image_id"]][0] if good else "a dog runs across the green grass"})
        return out


def test_more_candidates_keep_the_caption_the_model_agrees_on(test_reader):
    """With candidates > 1 the greedy caption is one of several: the sampled ones agree, so one of
    them is kept (CIDEr far above greedy's); one candidate is the greedy caption itself."""
    refs = {e["cocoid"]: [s["raw"].strip() for s in e["sentences"]] for e in test_reader.entries}
    common = {"image_size": 32, "batch_size": 3, "progress": False, "lengths": ()}
    greedy, _, _ = evaluate_caption(Sampler(refs), test_reader, **common)
    many, results, _ = evaluate_caption(Sampler(refs), test_reader, candidates=5, **common)
    assert greedy["caption_CIDEr"] < 0.2 and many["caption_CIDEr"] > 1.0
    assert all(r["caption"] == refs[r["image_id"]][0] for r in results)
    with pytest.raises(ValueError, match="candidates"):
        evaluate_caption(Sampler(refs), test_reader, candidates=0, **common)
