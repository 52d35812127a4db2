"""A first stage inside one training command: ``trainer.first_stage`` (METHOD.md §6, stage 1).

The paper trains its generalist in two stages: detection alone, then every task. With
``trainer.first_stage: {experiment: NAME, parts: [...], overrides: [...]}`` a run first trains
the experiment NAME into ``OUTPUT_DIR/first_stage`` (a run of its own: config, checkpoints,
history, metrics), then starts from that run's weights, only the named parts when ``parts`` is
given (``[image_tokenizer]``: the specialist's tokenizer, with this run's own LLM). The stage
shares this run's text tokenizer, seed, data root and device. A finished stage (its
``metrics.json`` and checkpoint written) is not trained again, so a resumed command goes on where
it stopped; an unfinished one resumes from its own newest checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from visionllm.engine.checkpoint import WEIGHTS

log = logging.getLogger("visionllm.train")

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
STAGE_DIR = "first_stage"
STAGE_KEYS = {"experiment", "parts", "overrides"}


def compose_train_config(overrides: list[str]) -> DictConfig:
    """The training config as ``tools/train.py OVERRIDES`` would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside tools/train.py: its own search path
        return compose("train", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def stage_finished(stage_dir: Path) -> bool:
    return (stage_dir / "metrics.json").is_file() and (stage_dir / "checkpoint" / WEIGHTS).is_file()


def check_first_stage(cfg: DictConfig) -> DictConfig | None:
    """``trainer.first_stage`` as given, or None; a clear error for one that cannot run (checked
    before anything else of the run happens)."""
    spec = OmegaConf.select(cfg, "trainer.first_stage")
    if not spec:
        return None
    unknown = set(spec) - STAGE_KEYS
    if unknown or not spec.get("experiment"):
        raise ValueError(f"trainer.first_stage takes experiment (required), parts and overrides; got {sorted(spec)}")
    if OmegaConf.select(cfg, "trainer.init_from"):
        raise ValueError("trainer.first_stage and trainer.init_from both say where this run starts: set one of them "
                         "(trainer.first_stage=null to start from trainer.init_from)")
    return spec


BACKBONE_PREFIX = "image_tokenizer.backbone.body."  # what model.backbone.frozen freezes


def part_prefixes(parts) -> tuple[str, ...] | None:
    """``trainer.init_parts`` (or a stage's ``parts``) as the weight-name prefixes they take
    (``image_tokenizer`` -> ``image_tokenizer.``); None or empty: every weight."""
    return tuple(f"{str(p).rstrip('.')}." for p in parts) if parts else None


def check_frozen_backbone(cfg: DictConfig) -> None:
    """A frozen backbone (``model.backbone.frozen``) keeps the weights it starts with, so it needs
    some: from ``model.backbone.checkpoint``, or from a first stage or ``trainer.init_from`` whose
    parts hold the backbone. A clear error otherwise, before anything trains (frozen at its random
    initial weights, it would hand the rest of the model noise for the whole run)."""
    if not OmegaConf.select(cfg, "model.backbone.frozen", default=False):
        return
    if OmegaConf.select(cfg, "model.backbone.checkpoint"):
        return
    spec = OmegaConf.select(cfg, "trainer.first_stage")
    if spec:
        source, parts = "trainer.first_stage", spec.get("parts")
    elif OmegaConf.select(cfg, "trainer.init_from"):
        source, parts = "trainer.init_from", OmegaConf.select(cfg, "trainer.init_parts")
    else:
        raise ValueError("model.backbone.frozen=true, but nothing gives the backbone weights (no "
                         "model.backbone.checkpoint, trainer.first_stage or trainer.init_from): it would stay at "
                         "its random initial weights. Set one of them, or model.backbone.frozen=false to train it "
                         "(experiment=shapes as one stage: trainer.first_stage=null model.backbone.frozen=false)")
    if parts and not BACKBONE_PREFIX.startswith(part_prefixes(parts)):
        raise ValueError(f"model.backbone.frozen=true, but the parts {list(parts)} that {source} starts this run "
                         f"from do not hold the backbone ({BACKBONE_PREFIX}...): it would stay at its random "
                         f"initial weights. Add image_tokenizer to the parts, or set model.backbone.frozen=false")


def run_first_stage(cfg: DictConfig, train: Callable[[DictConfig], dict], sync: Callable[[], None]) -> Path | None:
    """Train ``trainer.first_stage`` (unless finished) and point ``trainer.init_from`` (and
    ``trainer.init_parts``) at it; returns the stage's directory, or None when there is none.
    ``sync``: waits for every process (the stage's last files are written by the first)."""
    spec = check_first_stage(cfg)
    if spec is None:
        return None
    stage_dir = Path(cfg.output_dir) / STAGE_DIR
    if stage_finished(stage_dir):
        log.info("first stage (%s) already finished in %s", spec.experiment, stage_dir)
    else:
        overrides = [f"experiment={spec.experiment}", f"output_dir={stage_dir}", f"tokenizer_dir={cfg.tokenizer_dir}",
                     f"seed={cfg.seed}", f"data.root={cfg.data.root}", f"trainer.device={cfg.trainer.device}",
                     f"trainer.strategy={OmegaConf.select(cfg, 'trainer.strategy', default='ddp')}",
                     "trainer.resume=auto", *(spec.get("overrides") or [])]
        log.info("first stage: experiment=%s into %s", spec.experiment, stage_dir)
        train(compose_train_config(overrides))
        sync()
        if not stage_finished(stage_dir):
            raise RuntimeError(f"the first stage in {stage_dir} ended without its checkpoint and metrics")
    cfg.trainer.init_from = str(stage_dir / "checkpoint")
    cfg.trainer.init_parts = list(spec.parts) if spec.get("parts") else None
    return stage_dir
