"""Output-format-as-query decoding (METHOD.md §5).

The prefix (the instruction with the M image tokens spliced in) and all M query groups go
through the LLM in one pass. Group i holds one query per slot of the output format
(``<cls> <x1> <y1> ...``); a query's input is its slot token's embedding plus the image
token v_i it answers for [ours: v_i carries both e_i and l_i, so a group is tied to its token
even where two tokens share a location]. Each group sees the prefix and, causally, its own
slots, never another group; every group's slot j sits at position ``len(prefix) + j``: M
parallel continuations of one prefix. The hidden state of a query is read as its answer.

Layout of one sequence (length T = Lp + M * S), right-padded prefix:

    [ prefix tokens (Lp, padded) | group 0 slots (S) | group 1 slots (S) | ... ]
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

PROMPT = "### Instruction:\n{instruction}\n### Response:\n"  # Alpaca's, so Alpaca weights feel at home


def splice_image_tokens(
    llm, prompts: list[str], image_tokens: torch.Tensor  # (B, M, H)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokenize the prompts, put the M image tokens where ``<image>`` stands.

    Returns prefix embeddings (B, Lp, H), the valid mask (B, Lp) and the token ids (B, Lp),
    right-padded.
    """
    B, M, _ = image_tokens.shape
    vocab = llm.vocab
    seqs = []
    for prompt in prompts:
        ids = llm.tokenizer(PROMPT.format(instruction=prompt), add_special_tokens=False)["input_ids"]
        ids = [llm.tokenizer.bos_token_id] + ids if llm.tokenizer.bos_token_id is not None else ids
        if ids.count(vocab.image) != 1:
            raise ValueError(f"an instruction needs exactly one <image>, got {ids.count(vocab.image)}: {prompt!r}")
        k = ids.index(vocab.image)
        seqs.append(ids[:k] + [vocab.image] * M + ids[k + 1 :])
    Lp = max(len(s) for s in seqs)
    device = image_tokens.device
    ids = torch.full((B, Lp), llm.tokenizer.pad_token_id, dtype=torch.long, device=device)
    valid = torch.zeros(B, Lp, dtype=torch.bool, device=device)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.as_tensor(s, device=device)
        valid[b, : len(s)] = True
    embeds = llm.embed(ids)
    is_image = ids == vocab.image  # (B, Lp), M per row
    embeds = embeds.masked_scatter(is_image[..., None], image_tokens.to(embeds.dtype))
    return embeds, valid, ids


def span_positions(llm, prompt: str, spans: list[tuple[int, int]], num_image_tokens: int) -> list[int]:
    """Positions, in the prefix ``splice_image_tokens`` makes of ``prompt``, of the tokens that
    overlap ``spans`` (character spans of ``prompt``): the earlier answers a conversation's
    instruction holds, which are learned too."""
    if not spans:
        return []
    base = PROMPT.index("{instruction}")
    enc = llm.tokenizer(PROMPT.format(instruction=prompt), add_special_tokens=False, return_offsets_mapping=True)
    image_at = enc["input_ids"].index(llm.vocab.image)
    shift = 1 if llm.tokenizer.bos_token_id is not None else 0
    out = []
    for j, (s, e) in enumerate(enc["offset_mapping"]):
        if any(s < base + b and e > base + a for a, b in spans):
            out.append(j + shift + (num_image_tokens - 1 if j > image_at else 0))
    return out


def group_layout(prefix_valid: torch.Tensor, num_groups: int, num_slots: int, dtype: torch.dtype,
                 prefix_only: bool = False):
    """4-D additive attention mask (B, 1, T, T) and position ids (B, T) of the one-pass sequence
    (``prefix_only``: the mask's prefix block alone, (B, 1, Lp, Lp), which is all that
    :func:`grouped_attention` takes)."""
    B, Lp = prefix_valid.shape
    G, S = num_groups, num_slots
    T = Lp + G * S
    device = prefix_valid.device
    idx = torch.arange(T, device=device)
    lengths = prefix_valid.sum(1)  # (B,)
    slot = torch.where(idx < Lp, idx, (idx - Lp) % S)
    pos = torch.where(idx[None] < Lp, idx[None].expand(B, -1), lengths[:, None] + slot[None])
    if prefix_only:
        return group_layout(prefix_valid, 0, S, dtype)[0], pos
    group = torch.where(idx < Lp, -1, (idx - Lp) // S)  # -1 = prefix
    causal = idx[None, :] <= idx[:, None]  # (T, T) key <= query
    same_group = (group[:, None] == group[None, :]) | (group[None, :] == -1)
    allowed = causal & same_group  # (T, T)
    key_valid = torch.cat([prefix_valid, prefix_valid.new_ones(B, G * S)], 1)  # (B, T)
    allowed = allowed[None] & key_valid[:, None, :]
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=device)[None]  # padded rows see themselves
    mask = torch.zeros(B, 1, T, T, dtype=dtype, device=device)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return mask, pos


GROUPED = "visionllm_groups"


def grouped_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      group_layout=None, **kwargs):
    """The one-pass sequence's attention computed by its blocks [ours]: the prefix attends to
    itself (``attention_mask``, (B, 1, Lp, Lp)), and each group's S slots to the prefix's valid
    keys and, causally, to their own S slots. The dense (T, T) mask of :func:`group_layout`
    allows exactly these pairs and no others, so both give the same output; this one scores
    Lp² + G·S·(Lp + S) pairs instead of (Lp + G·S)² (a 16-point polygon answer of 40 groups
    after a 400-token prefix: about a quarter). ``group_layout``: (Lp, G, S, key_valid (B, Lp))."""
    Lp, G, S, key_valid = group_layout
    n_rep = getattr(module, "num_key_value_groups", 1)
    if n_rep > 1:
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    B, h, T, d = query.shape
    scale = scaling if scaling is not None else d**-0.5
    out_prefix = F.scaled_dot_product_attention(query[:, :, :Lp], key[:, :, :Lp], value[:, :, :Lp],
                                                attn_mask=attention_mask, dropout_p=dropout, scale=scale)
    q = query[:, :, Lp:]  # (B, h, G*S, d)
    to_prefix = (q @ key[:, :, :Lp].transpose(-1, -2)).view(B, h, G, S, Lp) * scale
    to_prefix = to_prefix.masked_fill(~key_valid[:, None, None, None, :], float("-inf"))
    own_k = key[:, :, Lp:].reshape(B, h, G, S, d)
    own_v = value[:, :, Lp:].reshape(B, h, G, S, d)
    to_own = (q.reshape(B, h, G, S, d) @ own_k.transpose(-1, -2)) * scale  # (B, h, G, S, S)
    causal = torch.ones(S, S, dtype=torch.bool, device=query.device).tril()
    to_own = to_own.masked_fill(~causal, float("-inf"))
    probs = torch.cat([to_prefix, to_own], -1).float().softmax(-1).to(query.dtype)
    if dropout > 0:  # the layer passes 0 outside training
        probs = F.dropout(probs, dropout)
    out_groups = (probs[..., :Lp].reshape(B, h, G * S, Lp) @ value[:, :, :Lp]).view(B, h, G, S, d) \
        + probs[..., Lp:] @ own_v
    out = torch.cat([out_prefix, out_groups.reshape(B, h, G * S, d)], 2)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED, grouped_attention)


@contextmanager
def _attention(config, name: str):
    """``config``'s attention implementation set to ``name`` for the block (its layers read it
    at each call), then back to what it was."""
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def decode_groups(
    llm,
    prefix_embeds: torch.Tensor,  # (B, Lp, H)
    prefix_valid: torch.Tensor,  # (B, Lp)
    group_inputs: torch.Tensor,  # (B, G, H) what each group answers for (v_i)
    slot_ids: list[int],  # S structural tokens
    *,
    dense: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # slot queries (B, G, S, H), prefix (B, Lp, H)
    """The prefix and every group's slots in one pass. By default the attention is computed by
    blocks (:func:`grouped_attention`); ``dense``: with the full (T, T) mask, as any attention
    implementation takes it (the same numbers, up to rounding)."""
    B, G, H = group_inputs.shape
    S = len(slot_ids)
    slots = llm.embed(torch.as_tensor(slot_ids, device=group_inputs.device))  # (S, H)
    queries = (group_inputs[:, :, None, :] + slots[None, None]).flatten(1, 2)  # (B, G*S, H)
    embeds = torch.cat([prefix_embeds, queries.to(prefix_embeds.dtype)], 1)
    # Under activation checkpointing the backward pass runs the layers again, outside the block
    # below that sets the attention by blocks: there the full mask is the one that holds.
    dense = dense or bool(getattr(llm.decoder, "gradient_checkpointing", False))
    mask, pos = group_layout(prefix_valid, G, S, embeds.dtype, prefix_only=not dense)
    Lp = prefix_embeds.shape[1]
    if dense:
        hidden = llm.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    else:
        with _attention(llm.decoder.config, GROUPED):
            hidden = llm.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False,
                                 group_layout=(Lp, G, S, prefix_valid.bool())).last_hidden_state
    return hidden[:, Lp:].view(B, G, S, H), hidden[:, :Lp]


@torch.no_grad()
def decode_groups_stepwise(
    llm,
    prefix_embeds: torch.Tensor,  # (1, Lp, H), unpadded
    group_inputs: torch.Tensor,  # (1, G, H)
    slot_ids: list[int],
) -> torch.Tensor:  # (1, G, S, H)
    """The same answer token by token with a KV cache: prefix once, then each group's slots one
    at a time, the cache cropped back to the prefix between groups. The baseline the one pass
    is measured against (tools/bench_decoding.py)."""
    out = llm.decoder(inputs_embeds=prefix_embeds, use_cache=True)
    cache, Lp = out.past_key_values, prefix_embeds.shape[1]
    slots = llm.embed(torch.as_tensor(slot_ids, device=group_inputs.device))
    hs = []
    for g in range(group_inputs.shape[1]):
        extra = cache.get_seq_length() - Lp
        if extra:
            cache.crop(-extra)  # back to the prefix
        for j in range(len(slot_ids)):
            x = (group_inputs[:, g] + slots[j])[:, None].to(prefix_embeds.dtype)
            pos = torch.tensor([[Lp + j]], device=x.device)
            step = llm.decoder(inputs_embeds=x, past_key_values=cache, position_ids=pos, use_cache=True)
            cache = step.past_key_values
            hs.append(step.last_hidden_state[:, 0])
    return torch.stack(hs, 1).view(1, group_inputs.shape[1], len(slot_ids), -1)
