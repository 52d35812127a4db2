"""Self-critical caption training: CIDEr-D as the toolkit computes it, the reward, the batch of
sampled captions with their advantages, and the weighted text loss they train through."""

import random
from collections import defaultdict

import pytest
import torch
from pycocoevalcap.cider.cider import Cider

from helpers import compose_cfg, tiny_model_and_sets, tiny_train_cfg
from visionllm.data.captions import CocoCaptions
from visionllm.data.transforms import collate
from visionllm.engine import scst as self_critical
from visionllm.engine import tasks
from visionllm.evaluation.cider import CiderD, words
from visionllm.tasks import caption


@pytest.fixture(scope="module")
def references(shapes_root):
    r = CocoCaptions(image_dir=shapes_root / "val2017", ann_file=shapes_root / "annotations/captions_val2017.json")
    return dict(zip(r.image_ids(), r.reference_captions()))


def test_cider_d_is_the_toolkits(references):
    """With document frequencies from the scored set itself, each caption's CIDEr-D is what
    pycocoevalcap gives for the same words, for right, wrong and empty captions alike."""
    keys = sorted(references)
    rng = random.Random(0)
    cands = {k: [references[k][i % 5], references[rng.choice(keys)][1], "a dog on the grass", "star"][i % 4]
             for i, k in enumerate(keys)}
    gts = {k: [" ".join(words(r)) for r in references[k]] for k in keys}
    res = {k: [" ".join(words(cands[k]))] for k in keys}
    _, theirs = Cider().compute_score(gts, res)
    ours = CiderD([references[k] for k in keys])
    mine = [ours.score(cands[k], references[k]) for k in keys]
    assert torch.allclose(torch.tensor(mine, dtype=torch.float64), torch.tensor(theirs, dtype=torch.float64), atol=1e-9)
    assert max(mine) > 1.0 and min(mine) == 0.0  # it tells right from wrong
    with pytest.raises(ValueError, match="corpus"):
        CiderD([])


def test_the_reward_is_cider_less_the_missed_length(references):
    refs = next(iter(references.values()))
    sc = self_critical.SelfCritical(list(references.values()), start=0.5, samples=3, temperature=1.0,
                                    length_weight=2.0, max_new_tokens=8, max_steps=100)
    good = refs[0]
    n = caption.num_words(good)
    assert sc.reward(good, refs, ("about", n)) == pytest.approx(sc.cider.score(good, refs))
    assert sc.reward(good, refs, ("about", 2 * n)) == pytest.approx(sc.cider.score(good, refs) - 2.0 * 0.5)
    assert caption.length_miss("brief", 0, 12) == 0.5 and caption.length_miss("brief", 0, 8) == 0
    assert caption.length_miss("detailed", 0, 8) == 0.5 and caption.length_miss("detailed", 0, 30) == 0
    assert not sc.active(49) and sc.active(50)
    for bad, match in [({"samples": 1}, "samples"), ({"temperature": 0.0}, "temperature"), ({"start": 2.0}, "start")]:
        with pytest.raises(ValueError, match=match):
            self_critical.SelfCritical([refs], **{"start": 0.5, "samples": 3, "temperature": 1.0, "length_weight": 1.0,
                                                  "max_new_tokens": 8, "max_steps": 10, **bad})


def test_caption_rows_become_samples_weighted_by_advantage(shapes_root, tmp_path):
    """Each caption row of a batch becomes K rows of the model's own captions, whose advantages
    sum to zero per image; rows of other tasks stay as they were. The text loss weighs each
    answer by its row's weight: all zeros leave it at zero, a uniform 2 doubles it."""
    model, ds = tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0", "model.named_copy=true"])
    cap, det = ds.sets["caption"], ds.sets["detection"]
    batch = collate([cap[0], det[0], cap[1]])
    assert batch["targets"][0]["references"] and batch["targets"][0]["wish"][0] in ("brief", "about", "detailed")
    sc = self_critical.from_config({"samples": 3, "max_new_tokens": 6}, cap.reader, max_steps=10)
    model.train()
    out, stats = sc.expand(model, batch)
    assert model.training  # sampling runs in eval mode and gives the mode back
    assert len(out["targets"]) == 1 + 2 * 3 and out["images"].shape[0] == 7
    assert out["targets"][0] is batch["targets"][1]  # the detection row, untouched
    weights = torch.tensor([t["weight"] for t in out["targets"][1:]]).view(2, 3)
    assert torch.allclose(weights.sum(1), torch.zeros(2), atol=1e-5)
    assert {"scst_reward", "scst_cider"} <= set(stats)
    assert torch.equal(out["images"][1], batch["images"][0]) and torch.equal(out["images"][4], batch["images"][2])

    text_only = collate([cap[0], cap[1]])
    with torch.no_grad():
        plain = model(text_only)["loss_text"]
        for t in text_only["targets"]:
            t["weight"] = 0.0
        assert float(model(text_only)["loss_text"]) == 0.0
        for t in text_only["targets"]:
            t["weight"] = 2.0
        torch.testing.assert_close(model(text_only)["loss_text"], 2 * plain, rtol=1e-4, atol=1e-4)

    unchanged, none = sc.expand(model, collate([det[0]]))
    assert none == {} and len(unchanged["targets"]) == 1


def test_config_errors(shapes_root, tmp_path):
    cfg = tiny_train_cfg(shapes_root, tmp_path)
    r = CocoCaptions(image_dir=shapes_root / "val2017", ann_file=shapes_root / "annotations/captions_val2017.json")
    assert self_critical.from_config(None, r, max_steps=10) is None
    with pytest.raises(ValueError, match="unknown option"):
        self_critical.from_config({"sample": 4}, r, max_steps=10)
    with pytest.raises(ValueError, match="cannot list its captions"):
        self_critical.from_config({"samples": 4}, defaultdict(list), max_steps=10)
    assert tasks.task_options(cfg, "caption")["scst"] is None  # off by default
    assert compose_cfg("train", ["task=all"]).task.caption.scst is None


def test_training_samples_captions_after_the_start(shapes_root, tmp_path):
    """A run with the stage on from half-way logs the samples' reward only from then on."""
    import json

    from visionllm.engine.train import train

    cfg = tiny_train_cfg(shapes_root, tmp_path, [
        "task=all", "task.mixture.detection=0", "task.mixture.segmentation=0", "task.mixture.grounding=0",
        "task.mixture.vqa=0", "task.eval=[]", "trainer.max_steps=4", "trainer.eval_every=0",
        "+task.caption.scst.start=0.5", "+task.caption.scst.samples=2", "+task.caption.scst.max_new_tokens=4"])
    train(cfg)
    hist = [h for h in json.loads((tmp_path / "history.json").read_text()) if "loss" in h]
    assert [("scst_reward" in h) for h in hist] == [False, False, True, True]
    assert all(isinstance(h["scst_cider"], float) for h in hist[2:])


def test_a_resumed_run_samples_what_an_uninterrupted_one_does(shapes_root, tmp_path):
    """The sampling generator is in the trainer state: resumed at step 2, a run ends with the
    weights of one never stopped (it would draw other captions from a fresh generator)."""
    import shutil

    from safetensors.torch import load_file

    from visionllm.engine.train import train

    steps = ["task=all", "task.mixture.detection=0", "task.mixture.segmentation=0", "task.mixture.grounding=0",
             "task.mixture.vqa=0", "task.eval=[]", "trainer.max_steps=4", "trainer.eval_every=0",
             "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3", "trainer.tensorboard=false",
             "+task.caption.scst.start=0", "+task.caption.scst.samples=2", "+task.caption.scst.max_new_tokens=6",
             "+task.caption.scst.temperature=2.0"]
    train(tiny_train_cfg(shapes_root, tmp_path / "straight", steps))
    train(tiny_train_cfg(shapes_root, tmp_path / "resumed", steps))
    shutil.rmtree(tmp_path / "resumed/checkpoints/step_0000004")
    train(tiny_train_cfg(shapes_root, tmp_path / "resumed", [*steps, "trainer.resume=auto"]))
    a = load_file(str(tmp_path / "straight/checkpoint/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoint/model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
