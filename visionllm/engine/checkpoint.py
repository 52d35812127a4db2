"""Checkpoints: a directory that is all ``eval`` and ``infer`` need.

    DIR/model.safetensors    the weights that are not loaded from elsewhere: every trainable
                             tensor, plus whole parts built from random configs
    DIR/config.yaml          the resolved config (tokenizer paths pointing inside DIR)
    DIR/tokenizer/           the text tokenizer (when not the pretrained LLM's own)
    DIR/adapter/             with a pretrained LLM: the LoRA adapter in peft's format
                             (adapter_config.json naming the base directory)
    DIR/state.json           step and metrics at save time
    DIR/trainer_state.pt     optimizer, schedule, step, data position and RNG states, for
                             ``trainer.resume`` (tensors and plain values only: it loads
                             with ``torch.load(..., weights_only=True)``)

Written to a temporary directory and renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from visionllm.modeling.named_copy import set_count_existence

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
TRAINER_STATE = "trainer_state.pt"


def saved_state(model: torch.nn.Module, *, llm_pretrained: bool, full_state: dict | None = None) -> dict[str, torch.Tensor]:
    """Trainable tensors and buffers; the frozen base of a pretrained LLM is left to its own directory.
    ``full_state``: the model's state dict when it was gathered elsewhere (FSDP)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = {}
    for name, t in (full_state if full_state is not None else model.state_dict()).items():
        frozen_llm_base = name.startswith("llm.model.") and name not in trainable
        if llm_pretrained and frozen_llm_base:
            continue
        state[name] = t.detach().contiguous().cpu()
    return state


def save_checkpoint(
    model, cfg: DictConfig, out_dir: str | Path, *, state: dict | None = None, trainer_state: dict | None = None,
    full_state: dict | None = None,
) -> Path:
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    llm_pretrained = bool(OmegaConf.select(cfg, "model.llm.pretrained"))
    tensors = saved_state(model, llm_pretrained=llm_pretrained, full_state=full_state)
    # safetensors refuses tensors that share memory; clone the rare aliases (tied weights)
    seen, unique = set(), {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        unique[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    save_file(unique, str(tmp / WEIGHTS))
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    src_tok = Path(cfg.tokenizer_dir)
    if src_tok.is_dir():
        shutil.copytree(src_tok, tmp / "tokenizer")
    cfg.tokenizer_dir = "tokenizer"  # relative: resolved against the checkpoint at load time
    OmegaConf.save(cfg, tmp / CONFIG)
    if llm_pretrained and not OmegaConf.select(cfg, "model.llm.train_base"):
        # the LoRA adapter in peft's own format too, for tools that know peft and not us
        from visionllm.engine.adapters import save_lora_adapter

        llm_state = None if full_state is None else {
            k.removeprefix("llm.model."): v for k, v in full_state.items() if k.startswith("llm.model.")}
        save_lora_adapter(model, tmp / "adapter", cfg.model.llm.pretrained, state_dict=llm_state)
    (tmp / "state.json").write_text(json.dumps(state or {}, indent=2))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
    return out_dir


def load_config(ckpt_dir: str | Path) -> DictConfig:
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{ckpt_dir} is not a VisionLLM checkpoint (no {CONFIG})")
    cfg = OmegaConf.load(ckpt_dir / CONFIG)
    tok = Path(cfg.tokenizer_dir)
    cfg.tokenizer_dir = str(tok if tok.is_absolute() else ckpt_dir / tok)
    # A part without pretrained weights uses the tokenizer trained for the run, which the
    # checkpoint carries: the resolved config still names the run's own copy, which may have
    # moved, been overwritten by a later run or deleted since.
    for part in ("llm", "text_encoder"):
        node = OmegaConf.select(cfg, f"model.{part}")
        if node is not None and "tokenizer" in node and not node.get("pretrained"):
            node.tokenizer.path = cfg.tokenizer_dir
    return cfg


def load_weights(model, ckpt_dir: str | Path, cfg: DictConfig, *, may_lack: tuple[str, ...] = (),
                 parts: tuple[str, ...] | None = None) -> None:
    """Load a checkpoint's weights into a built model; every tensor it needs must be there,
    except those under the prefixes ``may_lack`` (parts that start as a no-op, which a later
    stage may add to an earlier stage's model: the text readout).

    ``parts``: only the weights under these prefixes (e.g. ``("image_tokenizer.",)``) are taken,
    every one of the model's there must be in the checkpoint, and the rest of the model keeps its
    own initial weights: a generalist started from the specialist's image tokenizer."""
    ckpt_dir = Path(ckpt_dir)
    weights = ckpt_dir / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_dir} has no {WEIGHTS}")
    state = load_file(str(weights))
    if parts is not None:
        parts = tuple(parts)
        if not parts:
            raise ValueError("load_weights: parts is empty (None takes every weight)")
        own = [k for k in model.state_dict() if k.startswith(parts)]
        absent = [p for p in parts if not any(k.startswith(p) for k in own)]
        if absent:  # e.g. box_head. where model.box_prior is off
            raise ValueError(f"this model has no weights under {absent} (of the parts {list(parts)} to take from "
                             f"{ckpt_dir}): take only parts it has, or turn on the option that builds them")
        state = {k: v for k, v in state.items() if k.startswith(parts)}
        lacking = [k for k in own if k not in state and not k.endswith("num_batches_tracked")
                   and not k.startswith(may_lack)]
        if lacking:
            raise ValueError(f"checkpoint {ckpt_dir} lacks weights of {list(parts)}: {lacking[:5]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a batch norm's step counter has no place in a frozen one (a stage trained with frozen_bn)
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if unexpected:
        raise ValueError(f"checkpoint {ckpt_dir} holds weights this model does not have: {unexpected[:5]}")
    if parts is not None:  # the rest of the model is not expected from this checkpoint
        return
    llm_pretrained = bool(OmegaConf.select(cfg, "model.llm.pretrained"))
    bad = [k for k in missing if not (llm_pretrained and k.startswith("llm.model.")) and not k.startswith(may_lack)]
    if bad:
        raise ValueError(f"checkpoint {ckpt_dir} lacks weights: {bad[:5]}")


def load_trainer_state(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt_dir} has no {TRAINER_STATE}: it cannot resume a run")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(ckpt_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model from a checkpoint directory; returns (model, cfg)."""
    ckpt_dir = Path(ckpt_dir)
    cfg = load_config(ckpt_dir)
    model = instantiate(cfg.model)
    load_weights(model, ckpt_dir, cfg)
    count_exist = OmegaConf.select(cfg, "task.vqa.count_exist")
    if count_exist is not None:  # the run's way of answering existence (tools/infer.py, the API)
        set_count_existence(model, bool(count_exist))
    return model.to(device).eval(), cfg
