"""The LLM decoder (METHOD.md §4): a LLaMA-family causal LM through ``transformers`` with
LoRA through ``peft``, held by composition and called with ``inputs_embeds``.

The VisionLLM tokens are added to the tokenizer and the embeddings resized; ``peft``'s
``trainable_token_indices`` trains only the rows of the added tokens (in the input embedding
and the output head), so a 7B model's 32000-row matrices are never copied.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from visionllm.vocab import LOC_HALF, NUM_CLASS_TOKENS, Vocab, add_visionllm_tokens


@torch.no_grad()
def init_added_rows(base, vocab: Vocab) -> None:
    """[ours] Give the new rows structure instead of noise, in the input embedding and the head:

    - location tokens get Fourier features of their offset k/512, so neighbouring bins start
      with neighbouring embeddings and a head row's logit varies smoothly with k: a peak at one
      bin is a phase the hidden state can point at, and what is learnt for one bin carries to
      its neighbours (1,025 bins would otherwise be 1,025 unrelated classes);
    - a class token's head row starts equal to its input row, so copying the embedding of the
      ``<ck>`` named in the instruction already scores ``<ck>`` highest.
    Rows keep the scale of the existing embeddings.
    """
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    if emb.is_meta:  # sized only (the planner, the config tests): no values to give
        return
    H = emb.shape[1]
    old = emb[: vocab.image].float()
    scale = old.std().item() if old.numel() > 1 else 0.02
    k = torch.arange(-LOC_HALF, LOC_HALF + 1, dtype=torch.float32)[:, None] / LOC_HALF  # (1025, 1)
    freqs = torch.logspace(0, math.log10(LOC_HALF), H // 2)[None] * math.pi  # (1, H/2)
    fourier = torch.cat([torch.sin(k * freqs), torch.cos(k * freqs)], 1)  # (1025, H - H%2)
    loc = torch.zeros(2 * LOC_HALF + 1, H)
    loc[:, : fourier.shape[1]] = fourier * scale * math.sqrt(2)  # unit-variance features at row scale
    loc_rows = slice(vocab.loc0, vocab.loc0 + 2 * LOC_HALF + 1)
    emb[loc_rows] = loc.to(emb)
    head[loc_rows] = loc.to(head)
    cls_rows = slice(vocab.class0, vocab.class0 + NUM_CLASS_TOKENS)
    head[cls_rows] = emb[cls_rows].to(head)


class LLM(nn.Module):
    def __init__(
        self,
        *,
        tokenizer,
        pretrained: str | None = None,
        vocab_size: int | None = None,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int = 344,
        max_positions: int = 2048,
        lora_rank: int = 64,
        lora_alpha: int = 128,
        lora_dropout: float = 0.05,
        train_base: bool = False,
        dtype: str = "float32",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.vocab: Vocab = add_visionllm_tokens(tokenizer)
        torch_dtype = getattr(torch, dtype)
        if pretrained:
            p = Path(pretrained)
            if not (p / "config.json").is_file():
                raise FileNotFoundError(f"LLM directory {p} has no config.json (expected a transformers checkpoint)")
            base = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch_dtype)
        else:
            cfg = LlamaConfig(
                vocab_size=max(len(tokenizer), vocab_size or 0),
                hidden_size=hidden_size,
                intermediate_size=intermediate_size,
                num_hidden_layers=num_layers,
                num_attention_heads=num_heads,
                num_key_value_heads=num_heads,
                max_position_embeddings=max_positions,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                tie_word_embeddings=False,
            )
            base = LlamaForCausalLM(cfg).to(torch_dtype)
        if base.get_input_embeddings().num_embeddings < len(tokenizer):
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        init_added_rows(base, self.vocab)
        if gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        new_rows = list(range(self.vocab.image, self.vocab.size))
        lora = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            trainable_token_indices={"embed_tokens": new_rows, "lm_head": new_rows},
        )
        self.model = get_peft_model(base, lora)
        if train_base:
            # A randomly initialised LLM has nothing to preserve: train all of it.
            for n, p in self.model.named_parameters():
                if "lora_" not in n:
                    p.requires_grad_(True)
        self.hidden_size = base.config.hidden_size

    @property
    def decoder(self) -> nn.Module:
        """The transformer stack (LlamaModel) with LoRA in place; returns hidden states."""
        return self.model.get_base_model().model

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def head_weight(self) -> torch.Tensor:
        """The output head's (V, H) weight with the trained rows of the added tokens in place."""
        head = self.model.get_output_embeddings()
        adapter = getattr(head, "token_adapter", None)
        if adapter is not None and not adapter.merged and not adapter.disable_adapters:
            return adapter.get_merged_weights(adapter.active_adapters)
        return head.weight

    def logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``hidden`` (..., H) over the whole vocabulary, or only over ``token_ids`` (K,):
        the slots of an output format need just their allowed rows of the head."""
        if token_ids is None:
            return self.model.get_output_embeddings()(hidden)
        return hidden.float() @ self.head_weight()[token_ids].float().t()  # float32 logits whatever the LLM dtype
