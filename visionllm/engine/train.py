"""The training loop, importable: ``train(cfg)`` (the Hydra wrapper is tools/train.py).

AdamW with warmup + cosine, gradient clipping, a progress bar (loss, lr, samples/s, ETA),
periodic COCO evaluation and atomic checkpoints (METHOD.md §6).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from visionllm.data.datasets import DetectionTrainSet
from visionllm.data.transforms import collate
from visionllm.engine.checkpoint import save_checkpoint
from visionllm.evaluation.detection import evaluate_detection
from visionllm.tasks import detection
from visionllm.text_tokenizer import train_text_tokenizer

log = logging.getLogger("visionllm.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def absolutize(cfg: DictConfig) -> None:
    """Paths in the config are relative to where the command was typed."""
    for key in ("output_dir", "tokenizer_dir", "data.root"):
        val = OmegaConf.select(cfg, key)
        if val:
            OmegaConf.update(cfg, key, to_absolute_path(str(val)))


def tokenizer_corpus(category_names: list[str]) -> list[str]:
    """Text a tokenizer for the tiny models is trained on: every template filled with the classes."""
    rng = random.Random(0)
    texts = []
    for t in detection.TEMPLATES:
        for _ in range(20):
            k = rng.randint(1, max(1, len(category_names)))
            texts.append(detection.make_instruction(rng.sample(category_names, k), template=t))
    return texts + category_names


def prepare_tokenizer(cfg: DictConfig, category_names: list[str]) -> None:
    """Train the text tokenizer of the tiny models once, unless a pretrained LLM brings its own."""
    tok_dir = Path(cfg.tokenizer_dir)
    if OmegaConf.select(cfg, "model.llm.pretrained") or (tok_dir / "tokenizer_config.json").is_file():
        return
    train_text_tokenizer(tokenizer_corpus(category_names), tok_dir, vocab_size=cfg.tokenizer_vocab_size)
    log.info("trained a text tokenizer into %s", tok_dir)


def param_groups(model, *, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """No decay on norms, biases and embeddings; the backbone learns slower (Deformable DETR)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = name.startswith("image_tokenizer.backbone.body.")
        no_decay = p.ndim < 2 or "norm" in name or "embed" in name or "token_adapter" in name
        key = (is_backbone, no_decay)
        groups.setdefault(key, {"params": [], "lr": lr * (backbone_lr_mult if is_backbone else 1.0),
                                "weight_decay": 0.0 if no_decay else weight_decay})
        groups[key]["params"].append(p)
    return list(groups.values())


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _to_device(batch: dict, device) -> dict:
    batch = dict(batch)
    batch["images"] = batch["images"].to(device, non_blocking=True)
    batch["pixel_mask"] = batch["pixel_mask"].to(device, non_blocking=True)
    return batch


def run_eval(model, cfg: DictConfig, val_reader, max_images=None, progress=True) -> tuple[dict, list, str]:
    return evaluate_detection(
        model,
        val_reader,
        image_size=cfg.data.image_size,
        chunk=cfg.task.eval_chunk,
        batch_size=cfg.trainer.eval_batch_size,
        max_images=max_images,
        progress=progress,
    )


def train(cfg: DictConfig) -> dict:
    """Train per ``cfg``; returns the final metrics. Writes OUTPUT_DIR/checkpoint and metrics.json."""
    absolutize(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    seed_everything(cfg.seed)
    tc = cfg.trainer
    device = pick_device(tc.device)

    train_reader = instantiate(cfg.data.train.detection)
    val_reader = instantiate(cfg.data.val.detection)
    vocabulary = list(cfg.data.categories or [c["name"] for c in train_reader.categories])
    prepare_tokenizer(cfg, vocabulary)
    model = instantiate(cfg.model).to(device)
    model.train()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model: %.2fM parameters, %.2fM trainable", sum(p.numel() for p in model.parameters()) / 1e6, n_train / 1e6)

    dataset = DetectionTrainSet(
        reader=train_reader, image_size=cfg.data.image_size, max_classes=cfg.task.max_classes,
        flip=cfg.task.flip, seed=cfg.seed, vocabulary=vocabulary,
    )
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(param_groups(model, lr=tc.lr, backbone_lr_mult=tc.backbone_lr_mult, weight_decay=tc.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.warmup_steps, tc.max_steps))

    history, metrics, step, epoch = [], {}, 0, 0
    bar = tqdm(total=tc.max_steps, desc="train", dynamic_ncols=True, mininterval=1.0)
    t0, seen = time.time(), 0
    while step < tc.max_steps:
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset, batch_size=tc.batch_size, shuffle=True, drop_last=True, collate_fn=collate,
            num_workers=tc.num_workers, generator=loader_gen, persistent_workers=False,
        )
        for batch in loader:
            losses = model(_to_device(batch, device))
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: {({k: v.item() for k, v in losses.items()})}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            step += 1
            seen += tc.batch_size
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                rate = seen / (time.time() - t0)
                rec = {"step": step, "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm), "samples_per_s": rate}
                rec.update({k: round(v.item(), 4) for k, v in losses.items()})
                history.append(rec)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{rec['lr']:.1e}", sps=f"{rate:.1f}")
            if step % tc.eval_every == 0 or step == tc.max_steps:
                metrics, _, table = run_eval(model, cfg, val_reader, max_images=tc.eval_max_images, progress=False)
                bar.write(f"step {step}: bbox_AP {metrics['bbox_AP']:.3f}  AP50 {metrics['bbox_AP50']:.3f}")
                history.append({"step": step, **metrics})
            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                save_checkpoint(model, cfg, out / "checkpoint", state={"step": step, "metrics": metrics})
                (out / "history.json").write_text(json.dumps(history, indent=1))
            if step >= tc.max_steps:
                break
        epoch += 1
    bar.close()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("done: %s", json.dumps(metrics))
    return metrics
