"""The text readout (model.text_readout): text answers reading the image tokens directly."""

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from tests.helpers import text_with_and_without, tiny_model_and_sets
from visionllm.modeling.readout import TextReadout
from visionllm.modeling.visionllm import question_line
from visionllm.tasks.vqa import answer_spans, question_text


def test_a_lookup_by_name_is_learnt():
    """The readout alone, with a linear head, learns "what colour is the <shape>?" over a set
    of tokens that each hold one shape and one colour: the lookup the LLM did not learn."""
    torch.manual_seed(0)
    H, M, S, C = 32, 6, 6, 5
    shape_emb, colour_emb, word_emb = torch.randn(S, H), torch.randn(C, H), torch.randn(S, H)
    readout, head = TextReadout(H, num_heads=2), torch.nn.Linear(H, C)
    opt = torch.optim.Adam([*readout.parameters(), *head.parameters()], lr=3e-3)

    def batch(n):
        shapes = torch.stack([torch.randperm(S)[:M] for _ in range(n)])  # distinct shapes per image
        colours = torch.randint(C, (n, M))
        asked = torch.randint(M, (n,))
        tokens = shape_emb[shapes] + colour_emb[colours]
        question = word_emb[shapes[torch.arange(n), asked]]
        return tokens, question, colours[torch.arange(n), asked]

    hidden = torch.zeros(1, 1, H)  # the LLM state says nothing: the answer must come from the tokens
    for _ in range(400):
        tokens, question, answer = batch(64)
        logits = head(readout(hidden.expand(64, 1, H), question, tokens)[:, 0])
        loss = torch.nn.functional.cross_entropy(logits, answer)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tokens, question, answer = batch(500)
    with torch.no_grad():
        acc = (head(readout(hidden.expand(500, 1, H), question, tokens)[:, 0]).argmax(-1) == answer).float().mean()
    assert acc > 0.9, acc  # chance is 1/5


def test_gates_add_up_rather_than_average():
    """Twice the same tokens give twice the readout: the sum counts matching tokens."""
    torch.manual_seed(0)
    readout = TextReadout(16, num_heads=2)
    torch.nn.init.normal_(readout.o.weight)
    hidden, question, tokens = torch.randn(1, 3, 16), torch.randn(1, 16), torch.randn(1, 4, 16)
    once = readout(hidden, question, tokens) - hidden
    twice = readout(hidden, question, tokens.repeat(1, 2, 1)) - hidden
    torch.testing.assert_close(twice, 2 * once)
    with pytest.raises(ValueError, match="multiple"):
        TextReadout(10, num_heads=4)


def test_each_turn_of_a_conversation_is_read_with_its_own_question():
    """An earlier answer's positions get the question it answered, not the last one."""
    pairs = [("<image>\nWhat color is the star?", "red"), ("How many circles are there?", "2"),
             ("Is there a square?", "no")]
    text = question_text(pairs, 2)
    spans = answer_spans(text, pairs, 2)
    assert [question_line(text[:a]) for a, _ in spans] == ["What color is the star?", "How many circles are there?"]
    assert question_line(text) == "Is there a square?"
    assert question_line("<image>") == " "
    # a per-position question (B, T, H) gives each position the gates of its own question
    torch.manual_seed(0)
    readout = TextReadout(16, num_heads=2)
    hidden, tokens = torch.randn(1, 2, 16), torch.randn(1, 4, 16)
    q1, q2 = torch.randn(1, 16), torch.randn(1, 16)
    per_position = readout.gates(hidden, torch.stack([q1, q2], 1), tokens)
    torch.testing.assert_close(per_position[:, :, :1], readout.gates(hidden, q1, tokens)[:, :, :1])
    torch.testing.assert_close(per_position[:, :, 1:], readout.gates(hidden, q2, tokens)[:, :, 1:])
    assert not torch.allclose(per_position[:, :, 1:], readout.gates(hidden, q1, tokens)[:, :, 1:])


def test_starts_as_a_no_op_and_then_reads_the_image(shapes_root, tmp_path):
    """At init the model with a readout answers and scores text exactly as the one without it
    (its output projection is zero; its own greedy loop gives what ``generate`` gives); the text
    loss trains the readout, and once it is trained the answer depends on the image tokens
    through it."""
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, ["model.text_readout=true"])
    model.eval()
    # a later turn of a conversation: its earlier answers are learned too, each with its question
    vqa = next(x for x in (ds.sets["vqa"][i] for i in range(len(ds.sets["vqa"]))) if x["target"]["context_spans"])
    samples = [vqa, ds.sets["caption"][0]]
    batch = collate(samples)
    readout = model.text_readout
    (with_loop, loss_with), (with_generate, loss_without) = text_with_and_without(model, "text_readout", batch, 6)
    assert with_loop == with_generate
    torch.testing.assert_close(loss_with, loss_without)

    model.train()
    model(batch)["loss"].backward()
    assert readout.o.weight.grad.abs().sum() > 0
    # trained a little (here: set at random), the text depends on the image tokens through it
    torch.nn.init.normal_(readout.o.weight, std=1.0)
    model.zero_grad()
    model(batch)["loss_text"].backward()
    assert readout.q.weight.grad.abs().sum() > 0
    assert readout.pixels.weight.grad.abs().sum() > 0  # what the pixels under each token look like
    assert model.token_proj.weight.grad.abs().sum() > 0
    # a detection-only batch still touches every readout weight (zero), as FSDP needs
    model.zero_grad()
    model(collate([ds.sets["detection"][0]]))["loss"].backward()
    assert all(p.grad is not None for p in readout.parameters())


def test_an_earlier_run_without_a_readout_starts_a_later_one(shapes_root, tmp_path):
    """trainer.init_from may lack the readout's weights (it starts as a no-op); an evaluation
    of a checkpoint that lacks them still fails loudly."""
    from visionllm.engine.checkpoint import WEIGHTS, load_weights

    model, _ = tiny_model_and_sets(shapes_root, tmp_path, ["model.text_readout=true"])
    ckpt = tmp_path / "old"
    ckpt.mkdir()
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("text_readout.")}
    save_file(state, str(ckpt / WEIGHTS))
    cfg = OmegaConf.create({"model": {"llm": {"pretrained": None}}})
    load_weights(model, ckpt, cfg, may_lack=("text_readout.",))
    with pytest.raises(ValueError, match="lacks weights"):
        load_weights(model, ckpt, cfg)
