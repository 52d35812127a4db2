"""The training loop, importable: ``train(cfg)`` (the Hydra wrapper is tools/train.py).

AdamW with warmup + cosine, gradient clipping and accumulation, bf16 autocast, a progress bar
(loss, lr, samples/s, ETA), TensorBoard scalars, periodic evaluation of every task in
``cfg.task.eval``, atomic checkpoints that resume exactly (model, optimizer, schedule, step,
data position, RNG), and DDP or FSDP under ``torchrun`` (``trainer.strategy``, METHOD.md §6).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from visionllm.cli import pick_device
from visionllm.data.datasets import WithProgress
from visionllm.data.transforms import collate
from visionllm.engine import scst as self_critical
from visionllm.engine import tasks
from visionllm.engine.checkpoint import (
    load_config,
    load_trainer_state,
    load_weights,
    save_checkpoint,
)
from visionllm.engine.distributed import (
    STRATEGIES,
    EpochSampler,
    barrier,
    full_model_state,
    init_distributed,
    load_optimizer_state,
    local_value,
    mean_across,
    optimizer_state,
    wrap_model,
)
from visionllm.engine.optim import build_optimizer
from visionllm.engine.stages import (
    check_first_stage,
    check_frozen_backbone,
    part_prefixes,
    run_first_stage,
)
from visionllm.text_tokenizer import train_text_tokenizer

log = logging.getLogger("visionllm.train")
HEADLINE = ("bbox_AP", "bbox_AP50", "segm_AP", "grounding_P@0.5", "caption_CIDEr", "vqa_accuracy")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def absolutize(cfg: DictConfig) -> None:
    """Paths in the config are relative to where the command was typed."""
    for key in ("output_dir", "tokenizer_dir", "data.root", "data.refer_root", "trainer.init_from"):
        val = OmegaConf.select(cfg, key)
        if val:
            OmegaConf.update(cfg, key, to_absolute_path(str(val)))


def tokenizer_corpus(dataset, vocabulary: list[str], per_task: int = 300) -> list[str]:
    """Text a tokenizer for the tiny models is trained on: instructions and answers drawn from
    every training task (so every template and answer word is seen), plus the class names."""
    texts = list(vocabulary)
    rng = random.Random(0)
    for s in dataset.sets.values():
        for i in rng.sample(range(len(s)), min(len(s), per_task)):
            sample = s[i]
            texts.append(sample["instruction"])
            if sample["target"] and "text" in sample["target"]:
                texts.append(sample["target"]["text"])
    return texts


def prepare_tokenizer(cfg: DictConfig, texts: list[str]) -> None:
    """Train the text tokenizer of the tiny models once, unless a pretrained LLM brings its own.
    A run started from another's weights (``trainer.init_from``) takes that run's tokenizer: its
    embedding rows belong to those token ids, whatever this run's own corpus would give."""
    tok_dir = Path(cfg.tokenizer_dir)
    if OmegaConf.select(cfg, "model.llm.pretrained") or (tok_dir / "tokenizer_config.json").is_file():
        return
    init_from = OmegaConf.select(cfg, "trainer.init_from")
    if init_from:
        src = Path(load_config(init_from).tokenizer_dir)  # where that checkpoint keeps its own
        if (src / "tokenizer_config.json").is_file():
            shutil.copytree(src, tok_dir, dirs_exist_ok=True)
            log.info("took the text tokenizer of %s", init_from)
            return
    train_text_tokenizer(texts, tok_dir, vocab_size=cfg.tokenizer_vocab_size)
    log.info("trained a text tokenizer into %s", tok_dir)


def _due(step: int, every: int) -> bool:
    """Whether a periodic action (log, eval, checkpoint) falls on ``step``; ``every <= 0``: never
    (the last step still does all three)."""
    return every > 0 and step % every == 0


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
            "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss], "torch": torch.get_rng_state()}


def _set_rng_state(s: dict) -> None:
    random.setstate((s["python_version"], tuple(s["python"]), None))
    keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(s["torch"])


def find_resume(cfg: DictConfig) -> Path | None:
    """``trainer.resume``: null (fresh), ``auto`` (the newest checkpoint of this run, if any) or a directory."""
    spec = OmegaConf.select(cfg, "trainer.resume")
    if not spec:
        return None
    if spec != "auto":
        return Path(to_absolute_path(str(spec)))
    # only finished checkpoints: a run killed mid-save leaves a step_N.tmp behind
    steps = sorted(p.parent for p in Path(cfg.output_dir, "checkpoints").glob("step_*/trainer_state.pt")
                   if p.parent.name.removeprefix("step_").isdigit())
    return steps[-1] if steps else None


def _to_device(batch: dict, device) -> dict:
    batch = dict(batch)
    batch["images"] = batch["images"].to(device, non_blocking=True)
    batch["pixel_mask"] = batch["pixel_mask"].to(device, non_blocking=True)
    return batch


def evaluate_all(model, cfg: DictConfig, readers: dict, *, max_images=None, progress=False) -> tuple[dict, str]:
    metrics, tables = {}, []
    for name, reader in readers.items():
        m, _, table = tasks.evaluate(model, cfg, name, reader, batch_size=cfg.trainer.eval_batch_size,
                                     max_images=max_images, progress=progress)
        metrics.update(m)
        tables.append(f"== {name}\n{table}")
    return metrics, "\n".join(tables)


def _write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a file beside it and a rename: a run killed mid-write leaves
    the old file whole, never an empty or half one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_history(path: Path) -> list[dict]:
    """The run's evaluation history, to carry on from; a file that cannot be read (one a run of an
    older version was killed writing) costs the curves before the resume, with a warning, not
    the resume."""
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text())
        if isinstance(history, list) and all(isinstance(h, dict) and "step" in h for h in history):
            return history
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    log.warning("%s cannot be read; the history before this resume is not carried on", path)
    return []


def _save(model, cfg, out: Path, step: int, metrics: dict, trainer_state: dict, keep: int, *, full_state=None) -> None:
    ckpts = out / "checkpoints"
    path = save_checkpoint(model, cfg, ckpts / f"step_{step:07d}", state={"step": step, "metrics": metrics},
                           trainer_state=trainer_state, full_state=full_state)
    for old in sorted(ckpts.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    # out/checkpoint is what eval and infer take: the newest, replaced atomically
    tmp = out / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(path, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    tmp.rename(out / "checkpoint")


def train(cfg: DictConfig) -> dict:
    """Train per ``cfg``; returns the final metrics. Writes OUTPUT_DIR/checkpoint and metrics.json."""
    absolutize(cfg)
    check_first_stage(cfg)
    check_frozen_backbone(cfg)
    tc = cfg.trainer
    device = pick_device(tc.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="ddp")
    if strategy not in STRATEGIES:
        raise ValueError(f"trainer.strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    sharded = dist.enabled and strategy == "fsdp"
    out = Path(cfg.output_dir)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    seed_everything(cfg.seed)

    dataset, vocabulary = tasks.training_set(cfg)
    if dist.is_main:
        prepare_tokenizer(cfg, tokenizer_corpus(dataset, vocabulary))
    barrier(dist)
    if run_first_stage(cfg, train, lambda: barrier(dist)) is not None:  # trainer.first_stage
        seed_everything(cfg.seed)
        if dist.is_main:
            OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    scst = None
    if "caption" in dataset.sets:  # task.caption.scst: captions trained on their own samples' CIDEr
        scst = self_critical.from_config(tasks.task_options(cfg, "caption")["scst"], dataset.sets["caption"].reader,
                                         max_steps=tc.max_steps, seed=cfg.seed + dist.rank, device=device)
        if scst is not None and sharded:
            raise ValueError("task.caption.scst samples captions from the whole model: use trainer.strategy=ddp")
    # under FSDP every rank evaluates in step (the shards gather together); otherwise rank 0 alone
    val_readers = {name: tasks.reader(cfg, "val", name) for name in cfg.task.eval} if dist.is_main or sharded else {}
    model = instantiate(cfg.model).to(device)
    model.train()
    if dist.is_main:
        n_all = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("model: %.2fM parameters, %.2fM trainable", n_all / 1e6, n_train / 1e6)
    init_from = OmegaConf.select(cfg, "trainer.init_from")
    if init_from:  # a later stage starts from an earlier stage's weights (METHOD.md §6)
        parts = OmegaConf.select(cfg, "trainer.init_parts")
        parts = part_prefixes(parts)
        load_weights(model, init_from, cfg, may_lack=("text_readout.", "named_copy.", "name_pool.", "name_location.",
                                                    "name_fit.", "token_classes.", "scene_proj."),  # they start as no-ops
                     parts=parts)
        log.info("initialised %s from %s", ", ".join(parts) if parts else "every weight", init_from)

    step, epoch, batch_in_epoch, history, metrics = 0, 0, 0, [], {}
    resume = find_resume(cfg)
    st = None
    if resume is not None:
        load_weights(model, resume, cfg)
        st = load_trainer_state(resume)
        if bool(st.get("sharded")) != sharded:  # the optimizer states are keyed differently
            writer_kind = "an FSDP run" if st.get("sharded") else "a DDP or one-process run"
            raise ValueError(f"{resume} was written by {writer_kind}: resume it with the trainer.strategy that wrote it")
    net = wrap_model(model, strategy, device, dist)  # before the optimizer: FSDP swaps the parameters
    opt, sched = build_optimizer(model, tc)
    if st is not None:
        load_optimizer_state(model, opt, st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        step, epoch, batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        _set_rng_state(st["rng"])
        if scst is not None and st.get("scst_rng") is not None:
            scst.generator.set_state(st["scst_rng"])
        history = [h for h in _read_history(out / "history.json") if h["step"] <= step]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume, step, epoch, batch_in_epoch)

    writer = None
    if dist.is_main and OmegaConf.select(cfg, "trainer.tensorboard", default=True):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    accumulate = int(OmegaConf.select(cfg, "trainer.accumulate", default=1))
    bf16 = OmegaConf.select(cfg, "trainer.precision", default="fp32") == "bf16"
    keep = int(OmegaConf.select(cfg, "trainer.keep_checkpoints", default=2))

    # task.phases may change the model's loss weights from some fraction of the run on
    loss_phases = tasks.loss_weight_phases(cfg)
    if loss_phases and not hasattr(model, "loss_weights"):
        raise ValueError("task.phases: loss_weights are for a model with loss weights (model.loss_weights); "
                         f"{type(model).__name__} has none")
    base_loss_weights = dict(getattr(model, "loss_weights", {}))
    bar = tqdm(total=tc.max_steps, initial=step, desc="train", dynamic_ncols=True, mininterval=1.0, disable=not dist.is_main)
    t0, seen, micro = time.time(), 0, 0
    scst_stats: dict[str, list[float]] = {}  # since the last log line
    while step < tc.max_steps:
        dataset.set_epoch(epoch)
        sampler = EpochSampler(len(dataset), seed=cfg.seed, epoch=epoch, batch_size=tc.batch_size,
                               rank=dist.rank, world_size=dist.world_size, start=batch_in_epoch)
        # its own generator: making a loader must not draw from the global RNG that dropout uses,
        # or a resumed run (one more loader) would drift from an uninterrupted one
        # each index tagged with the step it feeds, for curricula (task.curriculum)
        tagged = WithProgress(sampler, first_step=step, per_step=tc.batch_size * accumulate, total_steps=tc.max_steps)
        loader = DataLoader(dataset, batch_size=tc.batch_size, sampler=tagged, drop_last=True, collate_fn=collate,
                            num_workers=tc.num_workers, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for batch in loader:
            batch = _to_device(batch, device)
            if scst is not None and scst.active(step):
                batch, stats = scst.expand(model, batch)
                scst_stats = {k: scst_stats.get(k, []) + [v] for k, v in stats.items()} if stats else scst_stats
            if loss_phases:  # from the step, so a resumed run weighs as an uninterrupted one
                model.loss_weights = tasks.loss_weights_at(base_loss_weights, loss_phases, step / tc.max_steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                losses = net(batch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: {({k: v.item() for k, v in losses.items()})}")
            (loss / accumulate).backward()
            batch_in_epoch += 1
            seen += tc.batch_size * dist.world_size
            micro += 1
            if micro % accumulate:
                continue
            grad_norm = local_value(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if _due(step, tc.log_every) or step == tc.max_steps:
                rate = seen / (time.time() - t0)
                rec = {"step": step, "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm), "samples_per_s": rate}
                rec.update({k: round(v, 5) for k, v in mean_across({k: v.item() for k, v in losses.items()}, dist).items()})
                rec.update({k: round(sum(v) / len(v), 5) for k, v in scst_stats.items()})
                scst_stats = {}
                history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.1e}", sps=f"{rate:.1f}")
                if writer:
                    for k, v in rec.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
            last = step == tc.max_steps
            if (_due(step, tc.eval_every) or last) and val_readers:  # every rank under FSDP, rank 0 otherwise
                metrics, _ = evaluate_all(model, cfg, val_readers, max_images=tc.eval_max_images)
                if dist.is_main:
                    bar.write(f"step {step}: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in HEADLINE if k in metrics))
                    history.append({"step": step, **metrics})
                    if writer:
                        for k, v in metrics.items():
                            writer.add_scalar(f"eval/{k}", v, step)
            if _due(step, tc.checkpoint_every) or last:
                # gathered on every rank under FSDP (a collective), written by rank 0
                full_state = full_model_state(model) if sharded else None
                opt_state = optimizer_state(model, opt)
                if dist.is_main:
                    state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "optimizer": opt_state,
                             "scheduler": sched.state_dict(), "rng": _rng_state(), "sharded": sharded,
                             "scst_rng": None if scst is None else scst.generator.get_state(),
                             "world_size": dist.world_size}
                    _save(model, cfg, out, step, metrics, state, keep, full_state=full_state)
                    _write_atomic(out / "history.json", json.dumps(history, indent=1))
            barrier(dist)
            if step >= tc.max_steps:
                break
        else:
            epoch += 1
            batch_in_epoch = 0
    bar.close()
    if writer:
        writer.close()
    if dist.is_main:
        _write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
        log.info("done: %s", json.dumps(metrics))
    return metrics
