"""Real LLM weights out of a VisionLLM checkpoint (METHOD.md §4): the LoRA adapter in peft's own
format, or the adapter merged into a plain ``transformers`` model directory.

The adapter holds LoRA's A/B matrices and the trained rows of the added tokens (peft's
``trainable_token_indices``), not the 32000-row embedding and head: ``save_embedding_layers``
is off, although peft would switch it on by itself because the vocabulary grew (peft PR #1383).
As peft's troubleshooting guide says for grown vocabularies (PR #1335), the base is loaded,
resized to the tokenizer saved beside the adapter, and only then given the adapter:
``load_lora_adapter`` does exactly that. The trained rows overwrite all added rows, so what
the resize puts there does not matter.

``merge_lora`` folds LoRA into q/k/v/o with ``merge_and_unload()``; peft's
``TrainableTokensWrapper`` writes the trained rows into ``embed_tokens`` and ``lm_head`` while
unloading (``index_copy``), and the result is checked row by row before it is saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _trained_rows(peft_model) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Token indices and trained values of the added rows, for ``embed_tokens`` and ``lm_head``."""
    out = {}
    for which, layer in (("embed_tokens", peft_model.get_input_embeddings()), ("lm_head", peft_model.get_output_embeddings())):
        adapter = getattr(layer, "token_adapter", None)
        if adapter is None:
            continue
        name = adapter.active_adapters[0]
        out[which] = (list(adapter.token_indices[name]), adapter.trainable_tokens_delta[name].detach().clone())
    return out


def save_lora_adapter(model, out_dir: str | Path, base_dir: str | Path | None = None, *,
                      state_dict: dict | None = None) -> Path:
    """Write the LLM's adapter of ``model`` (a VisionLLM) into ``out_dir`` in peft's format:
    ``adapter_config.json`` (``base_model_name_or_path`` = ``base_dir``), ``adapter_model.safetensors``
    and the tokenizer with the VisionLLM tokens. ``state_dict``: the peft model's full state
    dict when it was gathered elsewhere (FSDP shards the live one)."""
    peft_model = model.llm.model
    trained_base = [n for n, p in peft_model.named_parameters()
                    if p.requires_grad and "lora_" not in n and "trainable_tokens_delta" not in n]
    if trained_base:
        # An adapter would silently lose these: the full merged model is the honest export.
        raise ValueError(f"the LLM base itself was trained (e.g. {trained_base[0]}; model.llm.train_base=true): "
                         "an adapter cannot hold it, use merge_lora")
    out_dir = Path(out_dir)
    cfg = peft_model.peft_config[peft_model.active_adapter]
    previous = cfg.base_model_name_or_path
    if base_dir is not None:
        cfg.base_model_name_or_path = str(Path(base_dir).resolve())
    try:
        extra = {} if state_dict is None else {"state_dict": state_dict}
        peft_model.save_pretrained(str(out_dir), save_embedding_layers=False, **extra)
    finally:
        cfg.base_model_name_or_path = previous
    model.llm.tokenizer.save_pretrained(str(out_dir))
    return out_dir


def _require(path: Path, files: list[str], what: str) -> None:
    missing = [f for f in files if not (path / f).is_file()]
    if not path.is_dir() or missing:
        raise FileNotFoundError(f"{what} {path} is missing {missing or 'entirely'}")


def load_lora_adapter(adapter_dir: str | Path, base_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """The base causal LM with the adapter applied (a ``PeftModel``) and the tokenizer, from the
    directory ``save_lora_adapter`` wrote; ``base_dir`` defaults to the one it records."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from visionllm.text_tokenizer import load_tokenizer

    adapter_dir = Path(adapter_dir)
    _require(adapter_dir, [ADAPTER_CONFIG, ADAPTER_WEIGHTS], "LoRA adapter directory")
    base_dir = Path(base_dir or json.loads((adapter_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"])
    _require(base_dir, ["config.json"], "base LLM directory")
    tokenizer = load_tokenizer(adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    if base.get_input_embeddings().num_embeddings < len(tokenizer):
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval(), tokenizer


def merge_lora(ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge the LLM of a VisionLLM checkpoint (LoRA + trained token rows) into its base and save
    a plain ``transformers`` directory that ``AutoModelForCausalLM.from_pretrained`` loads, with
    the tokenizer (VisionLLM tokens included)."""
    from visionllm.engine.checkpoint import load_model

    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    _require(ckpt_dir, ["config.yaml", "model.safetensors"], "VisionLLM checkpoint directory")
    model, _ = load_model(ckpt_dir)
    peft_model = model.llm.model
    rows = _trained_rows(peft_model)
    base = peft_model.merge_and_unload()
    # The new rows must be the trained ones, not the base's (a peft version that merged LoRA but
    # skipped the token wrappers would otherwise ship untrained <ck>/<pk> rows without a word).
    for which, layer in (("embed_tokens", base.get_input_embeddings()), ("lm_head", base.get_output_embeddings())):
        if which in rows:
            idx, values = rows[which]
            if not torch.equal(layer.weight.detach()[idx], values.to(layer.weight.dtype)):
                raise RuntimeError(f"merging left the trained {which} rows out; peft's merge_and_unload changed behaviour")
    base.config.use_cache = True  # training turned it off for checkpointing; inference wants it
    out_dir.mkdir(parents=True, exist_ok=True)
    base.save_pretrained(str(out_dir))
    model.llm.tokenizer.save_pretrained(str(out_dir))
    return out_dir
