"""From config to tasks: which reader feeds which task's sample builder for training, and which
evaluator scores it. The single place that knows every task by name.

``cfg.task.mixture`` weights the training tasks, ``cfg.task.eval`` lists the evaluated ones;
``cfg.task.<name>`` holds a task's options (defaults below); ``cfg.data.{train,val}.<name>``
the readers.
"""

from __future__ import annotations

import logging
import math

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from visionllm.data.datasets import Curriculum, Mixture, TaskSet
from visionllm.evaluation.caption import evaluate_caption
from visionllm.evaluation.detection import evaluate_detection
from visionllm.evaluation.grounding import evaluate_grounding
from visionllm.evaluation.segmentation import evaluate_segmentation
from visionllm.evaluation.vqa import evaluate_vqa
from visionllm.modeling.named_copy import count_existence
from visionllm.tasks import caption, detection, grounding, segmentation, vqa

log = logging.getLogger(__name__)

TASKS = ("detection", "segmentation", "grounding", "caption", "vqa")

DEFAULTS = {
    "detection": {"max_classes": 32, "eval_chunk": 32, "flip": True, "described": 0.0, "eval_classes_per_group": 3,
                  "eval_location_window": 0},
    "segmentation": {"max_classes": 32, "eval_chunk": 32, "flip": True, "points": [8, 12, 16, 20, 24], "eval_points": 16,
                     "described": 0.0, "eval_classes_per_group": 3, "eval_location_window": 0},
    "grounding": {"rank": "class", "expressions": 1},
    "caption": {"candidates": 1, "temperature": 0.7, "scst": None, "no_repeat_ngram": 0, "target": "random",
                "references": None, "eval_instruction": None},
    "vqa": {"count_exist": None},
}


def task_options(cfg: DictConfig, name: str) -> dict:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    opts = dict(DEFAULTS[name])
    node = OmegaConf.select(cfg, f"task.{name}")
    if node is not None:
        opts.update(OmegaConf.to_container(node, resolve=True))
    return opts


def category_names(reader) -> list[str]:
    return [c["name"] for c in reader.categories]


def _builder(name: str, opts: dict, image_size: int, vocabulary: list[str] | None, reader):
    if name in ("detection", "segmentation"):
        described = detection.DescribedNames.from_reader(reader, float(opts["described"]))
        common = dict(vocabulary=vocabulary, image_size=image_size, max_classes=opts["max_classes"], flip=opts["flip"],
                      described=described)
    if name == "detection":
        return lambda r, rng: detection.training_sample(r, rng=rng, **common)
    if name == "segmentation":
        return lambda r, rng: segmentation.training_sample(r, rng=rng, num_points_choices=tuple(opts["points"]), **common)
    if name == "caption":
        consensus = caption.consensus_from_reader(opts["target"], reader)
        positions = caption.check_positions(opts["references"])
        return lambda r, rng: caption.training_sample(r, image_size=image_size, rng=rng, consensus=consensus,
                                                      positions=positions)
    if name == "grounding":
        k = grounding.check_expressions(opts["expressions"])
        companions = grounding.Companions(reader) if k > 1 else None
        return lambda r, rng: grounding.training_sample(r, image_size=image_size, rng=rng, companions=companions,
                                                        expressions=k)
    return lambda r, rng: vqa.training_sample(r, image_size=image_size, rng=rng)


def reader(cfg: DictConfig, split: str, name: str):
    node = OmegaConf.select(cfg, f"data.{split}.{name}")
    if node is None:
        raise ValueError(f"data={cfg.data.name} has no {split} reader for task {name!r}")
    return instantiate(node)


def training_set(cfg: DictConfig) -> tuple[Mixture, list[str]]:
    """The weighted mixture of ``cfg.task.mixture``; also the class vocabulary of detection data."""
    weights = {k: float(v) for k, v in cfg.task.mixture.items() if float(v) > 0}
    phases = mixture_phases(cfg)
    drawn = list(weights) + [k for _, w in phases for k in w if w[k] > 0 and k not in weights]
    sets, vocabulary = {}, list(cfg.data.categories or [])
    for name in drawn:
        r = reader(cfg, "train", name)
        if name in ("detection", "segmentation") and not vocabulary:
            vocabulary = category_names(r)
        sets[name] = TaskSet(reader=r, build=_builder(name, task_options(cfg, name), cfg.data.image_size, vocabulary or None, r),
                             seed=cfg.seed, name=name)
    return Mixture(sets, weights, seed=cfg.seed, curricula=curricula(cfg, sets), phases=phases), vocabulary


def _phases(cfg: DictConfig) -> list[dict]:
    """``cfg.task.phases`` as plain dicts, each checked for its form."""
    node = OmegaConf.select(cfg, "task.phases")
    phases = OmegaConf.to_container(node, resolve=True) if node else []
    for i, phase in enumerate(phases):
        parts = {"mixture", "loss_weights"} & set(phase) if isinstance(phase, dict) else set()
        if (not parts or "from" not in phase or set(phase) - {"from", "mixture", "loss_weights"}
                or not all(isinstance(phase[k], dict) for k in parts)):
            raise ValueError(f"task.phases[{i}]: expected {{from: fraction, mixture: {{task: weight, ...}}, "
                             f"loss_weights: {{loss_name: weight, ...}}}} (either or both), got {phase!r}")
    return phases


def mixture_phases(cfg: DictConfig) -> list[tuple[float, dict[str, float]]]:
    """``cfg.task.phases``: ``[{from: fraction, mixture: {task: weight, ...}}, ...]``; from that
    fraction of the run on, tasks are drawn by ``task.mixture`` updated with the phase's weights
    (a task it does not name keeps its weight)."""
    out = []
    for i, phase in enumerate(_phases(cfg)):
        mixture = phase.get("mixture", {})
        unknown = [k for k in mixture if k not in TASKS]
        if unknown:
            raise ValueError(f"task.phases[{i}].mixture: unknown task(s) {unknown}; known: {', '.join(TASKS)}")
        weights = {k: float(v) for k, v in cfg.task.mixture.items()}
        weights.update({k: float(v) for k, v in mixture.items()})
        out.append((float(phase["from"]), weights))
    return out


def loss_weight_phases(cfg: DictConfig) -> list[tuple[float, dict[str, float]]]:
    """``task.phases``' ``loss_weights: {loss_name: weight}``: from that fraction of the run on,
    the model's loss weights are ``model.loss_weights`` updated with the phase's (so a loss can
    start late: ``model.loss_weights.loss_referent=0`` and a phase that sets it to 1)."""
    out = []
    for i, phase in enumerate(_phases(cfg)):
        weights = phase.get("loss_weights")
        if weights is None:
            continue
        bad = [k for k, v in weights.items()
               if not str(k).startswith("loss_") or not isinstance(v, (int, float)) or v < 0]
        if bad:
            raise ValueError(f"task.phases[{i}].loss_weights: {bad}: a loss is named as the training log "
                             "names it (loss_...), and its weight is a number >= 0")
        out.append((float(phase["from"]), {k: float(v) for k, v in weights.items()}))
    return out


def loss_weights_at(base: dict, phases: list[tuple[float, dict[str, float]]], progress: float) -> dict:
    """The loss weights at ``progress`` (the fraction of the run done): ``base`` updated by the
    latest phase begun, as the mixture's phases are."""
    weights = dict(base)
    for start, phase in sorted(phases, key=lambda p: p[0]):
        if progress >= start:
            weights = {**base, **phase}
    return weights


def curricula(cfg: DictConfig, sets: dict[str, TaskSet]) -> dict[str, Curriculum]:
    """``cfg.task.curriculum``: ``{tasks: [...], stages: [[until_fraction, max_objects], ...]}``;
    a record's difficulty is how many objects its image holds, counted in the detection
    reader's annotations of the same images (records of other images come last)."""
    node = OmegaConf.select(cfg, "task.curriculum")
    if node is None or not node.get("stages"):
        return {}
    names = [n for n in node.get("tasks") or [] if n in sets]
    unknown = [n for n in node.get("tasks") or [] if n not in TASKS]
    if unknown:
        raise ValueError(f"task.curriculum.tasks: unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    if not names:
        return {}
    counts_reader = sets["detection"].reader if "detection" in sets else reader(cfg, "train", "detection")
    if not hasattr(counts_reader, "object_counts"):
        raise ValueError("task.curriculum needs a detection reader with object_counts() to rank images by objects")
    counts = counts_reader.object_counts()
    stages = [tuple(s) for s in OmegaConf.to_container(node.stages, resolve=True)]
    out = {}
    for name in names:
        r = sets[name].reader
        if not hasattr(r, "image_ids"):
            raise ValueError(f"task.curriculum: the {name} reader ({type(r).__name__}) cannot list its image ids")
        difficulty = [counts.get(i, math.inf) if i is not None else math.inf for i in r.image_ids()]
        out[name] = Curriculum(difficulty, stages, name=name)
        log.info("curriculum %s: %s records per stage %s (of %d)", name, out[name].sizes(), stages, len(difficulty))
    return out


def evaluate(model, cfg: DictConfig, name: str, val_reader, *, batch_size: int, max_images=None, progress=True,
             chunk: int | None = None):
    """Run one task's evaluator -> (flat metrics, results, printable table)."""
    opts = task_options(cfg, name)
    size = cfg.data.image_size
    common = {"image_size": size, "batch_size": batch_size, "max_images": max_images, "progress": progress}
    if name in ("detection", "segmentation"):
        common.update(chunk=chunk or opts["eval_chunk"], classes_per_group=int(opts["eval_classes_per_group"]),
                      location_window=int(opts["eval_location_window"]))
    if name == "detection":
        return evaluate_detection(model, val_reader, **common)
    if name == "segmentation":
        return evaluate_segmentation(model, val_reader, num_points=opts["eval_points"], **common)
    if name == "grounding":
        return evaluate_grounding(model, val_reader, rank=opts["rank"], **common)
    if name == "caption":
        return evaluate_caption(model, val_reader, candidates=int(opts["candidates"]),
                                temperature=float(opts["temperature"]), no_repeat_ngram=int(opts["no_repeat_ngram"]),
                                instruction=opts["eval_instruction"], **common)
    if opts["count_exist"] is None:  # as the model was built
        return evaluate_vqa(model, val_reader, **common)
    with count_existence(model, bool(opts["count_exist"])):
        return evaluate_vqa(model, val_reader, **common)
