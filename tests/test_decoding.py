"""The one-pass group decoder against each group decoded alone, as its own sequence."""

import pytest
import torch

from visionllm.modeling.decoding import (
    decode_groups,
    decode_groups_stepwise,
    span_positions,
    splice_image_tokens,
)
from visionllm.modeling.llm import LLM
from visionllm.tasks import detection
from visionllm.text_tokenizer import load_tokenizer, train_text_tokenizer


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    train_text_tokenizer([detection.make_instruction(["circle", "star"], template=t) for t in detection.TEMPLATES], d, vocab_size=400)
    torch.manual_seed(0)
    return LLM(tokenizer=load_tokenizer(d), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, lora_rank=4).eval()


def _alone(llm, instruction, image_tokens, g, slots):
    """Group g as a plain causal sequence: prefix then its slots, nothing else."""
    prefix, _, _ = splice_image_tokens(llm, [instruction], image_tokens)
    q = (image_tokens[:, g, None] + llm.embed(torch.tensor(slots))[None])
    h = llm.decoder(inputs_embeds=torch.cat([prefix, q], 1)).last_hidden_state
    return h[:, prefix.shape[1]:]


@torch.no_grad()
def test_one_pass_equals_each_group_alone(llm):
    G = 5
    slots = llm.vocab.slot_ids(2)
    instr = [detection.make_instruction(["circle", "star"], template=detection.TEMPLATES[0]),
             detection.make_instruction(["star"], template=detection.TEMPLATES[3])]  # different lengths: padding
    image_tokens = torch.randn(2, G, 64)
    prefix, valid, _ = splice_image_tokens(llm, instr, image_tokens)
    assert valid[0].sum() != valid[1].sum()
    hidden, _ = decode_groups(llm, prefix, valid, image_tokens, slots)  # (2, G, S, H)
    head_ids = torch.arange(llm.vocab.loc0, llm.vocab.loc0 + 1025)
    for b in range(2):
        for g in range(G):
            alone = _alone(llm, instr[b], image_tokens[b : b + 1], g, slots)[0]
            torch.testing.assert_close(hidden[b, g], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(llm.logits(hidden[b, g], head_ids), llm.logits(alone, head_ids), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_stepwise_with_cache_agrees(llm):
    slots = llm.vocab.slot_ids(2)
    image_tokens = torch.randn(1, 4, 64)
    prefix, valid, _ = splice_image_tokens(llm, [detection.make_instruction(["circle"])], image_tokens)
    one, _ = decode_groups(llm, prefix, valid, image_tokens, slots)
    step = decode_groups_stepwise(llm, prefix, image_tokens, slots)
    torch.testing.assert_close(one, step, atol=1e-5, rtol=1e-5)


def test_restricted_logits_match_full_head(llm):
    h = torch.randn(3, 64)
    ids = torch.tensor([3, llm.vocab.image, llm.vocab.class_id(2), llm.vocab.loc_id(0)])
    torch.testing.assert_close(llm.logits(h)[:, ids], llm.logits(h, ids))


def test_image_placeholder_required(llm):
    with pytest.raises(ValueError, match="<image>"):
        splice_image_tokens(llm, ["no placeholder here"], torch.randn(1, 2, 64))


def test_span_positions_pick_the_answer_tokens_after_the_image(llm):
    text = "Q: What is this?\n<image> A: a circle\nQ: And this one? A: star\nHow many?"
    spans = [(text.index("a circle"), text.index("a circle") + len("a circle")), (text.index("star"), text.index("star") + 4)]
    M = 3
    _, _, ids = splice_image_tokens(llm, [text], torch.zeros(1, M, 64))
    pos = span_positions(llm, text, spans, M)
    assert pos == sorted(pos) and ids[0, pos].ne(llm.vocab.image).all()
    for span in spans:  # each span's tokens spell its answer (a space before it may be a token of its own)
        assert llm.tokenizer.decode(ids[0, span_positions(llm, text, [span], M)]).strip() == text[span[0] : span[1]]
    assert span_positions(llm, text, [], M) == []


def test_block_attention_equals_the_dense_mask_with_gradients(llm):
    """decode_groups' default attention by blocks (grouped_attention) against the same pass
    with the full (T, T) mask: outputs and every gradient alike, padding and several groups."""
    G = 6
    slots = llm.vocab.slot_ids(3)  # a 3-point polygon: 7 slots
    instr = [detection.make_instruction(["circle", "star"], template=detection.TEMPLATES[0]),
             detection.make_instruction(["star"], template=detection.TEMPLATES[3])]
    torch.manual_seed(1)
    image_tokens = torch.randn(2, G, 64)
    prefix, valid, _ = splice_image_tokens(llm, instr, image_tokens)
    assert valid[0].sum() != valid[1].sum()
    runs = []
    for dense in (True, False):
        llm.zero_grad()
        tokens = image_tokens.clone().requires_grad_(True)
        hidden, prefix_hidden = decode_groups(llm, prefix.detach(), valid, tokens, slots, dense=dense)
        (hidden.pow(2).mean() + prefix_hidden[valid].pow(2).mean()).backward()
        grads = {n: p.grad.clone() for n, p in llm.named_parameters() if p.grad is not None}
        runs.append((hidden.detach(), prefix_hidden[valid].detach(), tokens.grad.clone(), grads))
    (h0, p0, t0, g0), (h1, p1, t1, g1) = runs
    torch.testing.assert_close(h1, h0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p1, p0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t1, t0, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4)
    assert llm.decoder.config._attn_implementation != "visionllm_groups"  # set for the pass only


def test_the_model_gives_the_same_losses_either_way(shapes_root, tmp_path):
    """model.group_attention: blocks (the default) and dense give one training step the same
    losses; an unknown value is refused."""
    from helpers import tiny_model_and_sets
    from visionllm.data.transforms import collate
    from visionllm.modeling.visionllm import VisionLLM

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, task="all")
    assert model.dense_groups is False
    batch = collate([ds[i] for i in range(6)])
    assert any(r.structured for r in batch["requests"])
    model.eval()  # no dropout: the two passes see the same weights and the same noise
    with torch.no_grad():
        blocks = model(batch)
        model.dense_groups = True
        dense = model(batch)
    assert blocks.keys() == dense.keys()
    for k in blocks:
        torch.testing.assert_close(blocks[k], dense[k], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="group_attention"):
        VisionLLM(image_tokenizer=model.image_tokenizer, llm=model.llm, group_attention="sparse")
