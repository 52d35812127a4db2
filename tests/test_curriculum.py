"""Curricula: text tasks drawn from images with few objects first (task.curriculum)."""

import math

import pytest

from helpers import tiny_train_cfg
from visionllm.data.datasets import Curriculum, WithProgress


def test_curriculum_draws_easy_records_until_each_stage_ends():
    difficulty = [3, 1, 2, 5, 1, math.inf]
    cur = Curriculum(difficulty, [[0.5, 2], [0.2, 1]])  # any order
    assert cur.sizes() == [2, 3]
    early = {cur.pick(i, 0.1) for i in range(12)}
    middle = {cur.pick(i, 0.3) for i in range(12)}
    assert early == {1, 4}
    assert middle == {1, 2, 4}
    assert [cur.pick(i, 0.5) for i in range(6)] == list(range(6))  # after the last stage: every record


def test_a_stage_no_record_fits_is_an_error_naming_it():
    with pytest.raises(ValueError, match="vqa.*difficulty <= 0.*easiest has 2"):
        Curriculum([2, 3], [[0.3, 0]], name="vqa")


def test_each_index_carries_the_fraction_of_the_run_it_trains():
    tagged = WithProgress(range(10), first_step=4, per_step=4, total_steps=8)
    items = list(tagged)
    assert len(tagged) == 10
    assert [i for i, _ in items] == list(range(10))
    assert [p for _, p in items] == [0.5] * 4 + [0.625] * 4 + [0.75] * 2


def test_text_tasks_start_on_the_images_with_fewest_objects(shapes_root, tmp_path):
    from visionllm.engine import tasks

    probe = tiny_train_cfg(shapes_root, tmp_path, ["task=all"])
    counts = tasks.reader(probe, "train", "detection").object_counts()
    fewest = min(counts.values())
    assert max(counts.values()) > fewest  # the tiny set mixes easy and busy images
    cfg = tiny_train_cfg(shapes_root, tmp_path, [
        "task=all", "+task.curriculum.tasks=[caption,vqa,grounding]", f"+task.curriculum.stages=[[0.5,{fewest}]]"])
    ds, _ = tasks.training_set(cfg)
    assert set(ds.curricula) == {"caption", "vqa", "grounding"}
    seen_early, seen_late = {}, {}
    for i in range(len(ds)):
        for progress, seen in ((0.0, seen_early), (0.9, seen_late)):
            sample = ds[(i, progress)]
            if sample["meta"]["task"] in ("caption", "vqa", "grounding"):
                iid = int(sample["meta"]["image_id"])
                seen.setdefault(iid, counts[iid])
    assert seen_early and set(seen_early.values()) == {fewest}
    assert max(seen_late.values()) > fewest
    assert ds[3]["meta"] == ds[(3, None)]["meta"]  # a plain index still works (tokenizer corpus, tests)


def test_an_unknown_curriculum_task_is_an_error(shapes_root, tmp_path):
    from visionllm.engine import tasks

    cfg = tiny_train_cfg(shapes_root, tmp_path, ["task=all", "+task.curriculum.tasks=[captions]",
                                                 "+task.curriculum.stages=[[0.5,1]]"])
    with pytest.raises(ValueError, match="unknown task.*captions"):
        tasks.training_set(cfg)


def test_a_later_phase_draws_tasks_by_its_own_weights(shapes_root, tmp_path):
    """task.phases: from 0.5 of the run on, only captions and VQA (detection alone before)."""
    from visionllm.engine import tasks

    cfg = tiny_train_cfg(shapes_root, tmp_path, [
        "task=all", "task.mixture.segmentation=0", "task.mixture.grounding=0", "task.mixture.caption=0",
        "task.mixture.vqa=0", "+task.phases=[{from: 0.5, mixture: {detection: 0, caption: 1, vqa: 1}}]"])
    ds, _ = tasks.training_set(cfg)
    assert set(ds.names) == {"detection", "caption", "vqa"}
    early = {ds[(i, 0.49)]["meta"]["task"] for i in range(12)}
    late = {ds[(i, 0.5)]["meta"]["task"] for i in range(12)}
    assert early == {"detection"} and late == {"caption", "vqa"}
    # a plain index (the tokenizer's corpus) draws from the first phase
    assert {ds[i]["meta"]["task"] for i in range(6)} == {"detection"}


def test_a_phase_changes_the_loss_weights_from_its_step_on(shapes_root, tmp_path):
    """A loss that starts late: model.loss_weights holds it at 0, a phase from 0.5 sets it to 1;
    the log shows it zero for the first half of the run and not after."""
    import json

    from visionllm.engine import tasks
    from visionllm.engine.train import train

    cfg = tiny_train_cfg(shapes_root, tmp_path, [
        "task=grounding", "task.eval=[]", "trainer.max_steps=4", "trainer.eval_every=0", "model.referent_loss=1.0",
        "+model.loss_weights.loss_referent=0", "+task.phases=[{from: 0.5, loss_weights: {loss_referent: 1.0}}]"])
    phases = tasks.loss_weight_phases(cfg)
    assert phases == [(0.5, {"loss_referent": 1.0})]
    base = {"loss_referent": 0.0, "loss_text": 2.0}
    assert tasks.loss_weights_at(base, phases, 0.49) == base
    assert tasks.loss_weights_at(base, phases, 0.5) == {"loss_referent": 1.0, "loss_text": 2.0}
    assert tasks.mixture_phases(cfg) == [(0.5, {k: float(v) for k, v in cfg.task.mixture.items()})]
    train(cfg)
    hist = [h for h in json.loads((tmp_path / "history.json").read_text()) if "loss" in h]
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    assert [h["loss_referent"] > 0 for h in hist] == [False, False, True, True]


@pytest.mark.parametrize("phases, match", [
    ("[{from: 0.5, loss_weights: {referent: 1}}]", "named as the training log"),
    ("[{from: 0.5, loss_weights: {loss_referent: -1}}]", ">= 0"),
    ("[{from: 0.5}]", "either or both"),
])
def test_a_malformed_loss_phase_is_an_error(shapes_root, tmp_path, phases, match):
    from visionllm.engine import tasks

    cfg = tiny_train_cfg(shapes_root, tmp_path, ["task=all", f"+task.phases={phases}"])
    with pytest.raises(ValueError, match=match):
        tasks.loss_weight_phases(cfg)


@pytest.mark.parametrize("phases, match", [
    ("[{from: 0.5, mixture: {captions: 1}}]", "unknown task"),
    ("[{from: 0.5, weights: {caption: 1}}]", "expected"),
    ("[{from: 1.5, mixture: {caption: 1}}]", r"in \(0, 1\)"),
    ("[{from: 0.5, mixture: {detection: 0, segmentation: 0, grounding: 0, caption: 0, vqa: 0}}]", "positive sum"),
])
def test_a_malformed_phase_is_an_error(shapes_root, tmp_path, phases, match):
    from visionllm.engine import tasks

    cfg = tiny_train_cfg(shapes_root, tmp_path, ["task=all", f"+task.phases={phases}"])
    with pytest.raises(ValueError, match=match):
        tasks.training_set(cfg)
