"""Optimizer and schedule (METHOD.md §6): AdamW, linear warmup then cosine."""

from __future__ import annotations

import math

import torch


def param_groups(model, *, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """No decay on norms, biases and embeddings; a pretrained backbone learns slower (Deformable
    DETR); a module with an ``lr_mult`` attribute learns at that multiple of the rate, with the
    weight decay divided by it so that AdamW's decay a step (rate times decay) stays as it was
    (a small head that starts at zero and must move far, without gradients large enough to take
    the global clip from the rest of the model). A module with an ``lr_from`` attribute > 0 (a
    fraction of the run) has its group marked with it: ``build_optimizer`` holds its rate at 0
    until then."""
    mults = {id(p): float(m.lr_mult) for m in model.modules() if getattr(m, "lr_mult", None)
             for p in m.parameters()}
    starts = {id(p): float(m.lr_from) for m in model.modules() if getattr(m, "lr_from", None)
              for p in m.parameters()}
    groups: dict[tuple[bool, bool, float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = ".backbone.body." in f".{name}"
        no_decay = p.ndim < 2 or "norm" in name or "embed" in name or "token_adapter" in name
        mult, start = mults.get(id(p), 1.0), starts.get(id(p), 0.0)
        key = (is_backbone, no_decay, mult, start)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr * (backbone_lr_mult if is_backbone else 1.0) * mult,
                "weight_decay": 0.0 if no_decay else weight_decay / mult,  # AdamW decays by lr * wd
                "lr_from": start,
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]  # a fixed order, so optimizer state resumes


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_lambda(warmup: int, total: int, restart: tuple[int, float, int] | None = None):
    """The rate's multiple at each step: linear warmup, then a cosine to 0 at ``total``; with
    ``restart`` = (step R, scale, warmup steps) the cosine ends at R instead, and from R the
    schedule starts again, warmup to ``scale`` then a cosine to 0 at ``total`` (a warm
    restart: a second stage in one run)."""
    if restart is None:
        return lambda step: _warmup_cosine(step, warmup, total)
    at, scale, again = restart
    if not warmup < at < total - again or scale <= 0 or again < 0:
        raise ValueError(f"trainer.restart: its step ({at}) must come after the first warmup ({warmup} steps) "
                         f"and leave room for its own ({again}) before the run's end ({total}); its rate "
                         f"({scale} times trainer.lr) must be > 0")
    return lambda step: (_warmup_cosine(step, warmup, at) if step < at
                         else scale * _warmup_cosine(step - at, again, total - at))


def restart_of(tc) -> tuple[int, float, int] | None:
    """``trainer.restart: {at: fraction of the run, lr: the rate restarted to, warmup_steps: N}``
    as (step, multiple of ``trainer.lr``, warmup steps); None where it is not set."""
    node = getattr(tc, "restart", None)
    if not node:
        return None
    unknown = set(node) - {"at", "lr", "warmup_steps"}
    if unknown or "at" not in node or "lr" not in node:
        raise ValueError(f"trainer.restart: expected {{at: fraction, lr: rate, warmup_steps: N}}, got {dict(node)!r}")
    return first_step(float(node["at"]), tc.max_steps), float(node["lr"]) / tc.lr, int(node.get("warmup_steps") or 0)


def first_step(fraction: float, total: int) -> int:
    """The first step whose progress (step / total) reaches ``fraction``, as task.phases begins a phase."""
    return next((s for s in range(total + 1) if s / total >= fraction), total)


def held_until(schedule, step_from: int):
    """``schedule`` with the rate at 0 before ``step_from`` (a part that starts late)."""
    return lambda step: 0.0 if step < step_from else schedule(step)


def build_optimizer(model, tc) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    groups = param_groups(model, lr=tc.lr, backbone_lr_mult=tc.backbone_lr_mult, weight_decay=tc.weight_decay)
    opt = torch.optim.AdamW(groups)
    schedule = lr_lambda(tc.warmup_steps, tc.max_steps, restart_of(tc))
    lambdas = [held_until(schedule, first_step(g["lr_from"], tc.max_steps)) if g["lr_from"] > 0 else schedule
               for g in groups]
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
