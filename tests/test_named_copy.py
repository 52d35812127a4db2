"""Copy from named tokens (model.named_copy): a text answer may take its word from the image
token whose name the question speaks of."""

import math
import random

import pytest
import torch
from hydra.errors import InstantiationException

from tests.helpers import text_with_and_without, tiny_model_and_sets
from visionllm.data.transforms import collate
from visionllm.modeling.generation import repeat_closers
from visionllm.modeling.named_copy import NamedCopy, bare_forms, count_distribution, singular_forms
from visionllm.modeling.visionllm import question_line

RED, BLUE, CIRCLE, STAR, WHAT = range(5)


def _named(*words_per_token, V=8, strength=6.0):
    """(M, V) log-probabilities of a head that names each token with its words."""
    logits = torch.zeros(len(words_per_token), V)
    for i, words in enumerate(words_per_token):
        logits[i, list(words)] = strength
    return logits.log_softmax(-1)


def _built(**kw):
    """A copy whose name words are RED, BLUE, CIRCLE and STAR (not WHAT); RED's bare form is
    word 5, BLUE's word 6."""
    copy = NamedCopy(hidden_size=16, bare_of=torch.tensor([5, 6, CIRCLE, STAR, WHAT, 5, 6, 7]), **kw)
    copy.note_names([RED, BLUE, CIRCLE, STAR, 99])  # out of range: ignored
    return copy


def _copy(copy, named, question, tokens=None):
    return copy.lookup(named, question, torch.randn(named.shape[0], 16) if tokens is None else tokens)[0][0].exp()


def test_the_question_picks_its_token_without_training():
    """At init the copy already points at the token the head names with the question's words,
    and hands out that token's other words; a question that fits no token spreads over all."""
    torch.manual_seed(0)
    copy = _built()
    named = _named([RED, CIRCLE], [BLUE, STAR])
    about_circle = _copy(copy, named, [WHAT, CIRCLE])
    about_star = _copy(copy, named, [WHAT, STAR])
    torch.testing.assert_close(about_circle.sum(), torch.tensor(1.0))
    assert about_circle[RED] > 3 * about_circle[BLUE]
    assert about_star[BLUE] > 3 * about_star[RED]
    either = _copy(copy, named, [WHAT])
    torch.testing.assert_close(either[RED], either[BLUE])
    assert copy.name_words.tolist() == [True] * 4 + [False] * 4
    # a word the head was never taught to say at a token does not move the pointer, however
    # much its log-probability differs between the tokens
    noisy = named.clone()
    noisy[:, WHAT] = torch.tensor([0.0, -30.0])
    torch.testing.assert_close(_copy(copy, noisy, [WHAT, STAR])[:WHAT], about_star[:WHAT])
    # the tokenizer's objectness counts too: a token it doubts is pointed at less
    doubted = copy.lookup(named, [WHAT], torch.randn(2, 16), torch.tensor([4.0, -4.0]))[0][0].exp()
    assert doubted[RED] > 3 * doubted[BLUE]
    # words outside the head's vocabulary (added tokens) are skipped; none at all: alike
    torch.testing.assert_close(_copy(copy, named, [WHAT, 99]), either)
    torch.testing.assert_close(_copy(copy, named, []), either)
    with pytest.raises(ValueError, match="words at the tokens"):
        copy.lookup(torch.zeros(2, 5), [1], torch.zeros(2, 16))


def test_a_copied_word_also_comes_in_its_bare_form(shapes_root, tmp_path):
    """An answer starts with "red", a name says " red": the copy's second row moves each
    in-sentence form's mass to its bare form, which the tokenizer maps."""
    copy = _built()
    log_c = copy.lookup(_named([RED, CIRCLE], [BLUE, STAR]), [CIRCLE], torch.randn(2, 16))[0]
    c, bare = log_c.exp()
    assert bare[RED] < 1e-20 and bare[BLUE] < 1e-20 and bare.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(bare[5:7], c[[RED, BLUE]] + c[5:7])
    torch.testing.assert_close(bare[CIRCLE:5], c[CIRCLE:5])
    model, _ = tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0", "model.named_copy=true"])
    tok = model.llm.tokenizer
    bare_of = model.named_copy.bare_of
    moved = (bare_of != torch.arange(len(bare_of))).nonzero()[:, 0].tolist()
    assert len(moved) > 10
    for i in moved:
        assert tok.decode([i]).startswith(" ") and tok.decode([int(bare_of[i])]) == tok.decode([i]).strip()
        assert int(bare_of[bare_of[i]]) == int(bare_of[i])  # a bare form stays
    torch.testing.assert_close(bare_forms(tok, model.llm.vocab.image), bare_of)


def test_the_pointer_reads_the_token_it_points_at_and_how_well_it_fits():
    """Once its read weights have trained (here: set), what the pointer adds to an answer is
    the pointed-at token's own vector, and it grows with how well and how many tokens fit."""
    copy = _built()
    torch.nn.init.eye_(copy.read_value.weight)
    tokens = torch.eye(16)[:2] * 4.0  # two tokens, orthogonal
    named = _named([RED, CIRCLE], [BLUE, STAR], strength=12.0)
    read_circle = copy.lookup(named, [CIRCLE], tokens)[1]
    read_star = copy.lookup(named, [STAR], tokens)[1]
    assert read_circle[0] > 3 * read_circle[1] and read_star[1] > 3 * read_star[0]
    torch.nn.init.zeros_(copy.read_value.weight)
    copy.read_score.weight.data[:] = torch.tensor([[1.0, 0.0], [0.0, 1.0]] + [[0.0, 0.0]] * 14)
    one = copy.lookup(named, [CIRCLE], tokens)[1]
    two = copy.lookup(_named([RED, CIRCLE], [BLUE, CIRCLE], strength=12.0), [CIRCLE], tokens)[1]
    none = copy.lookup(_named([RED, STAR], [BLUE, STAR], strength=12.0), [CIRCLE], tokens)[1]
    assert one[0] > none[0] + 5  # the best fit: a circle is there, or not
    assert two[1] > one[1] + 0.5  # about log 2 more: two circles
    # with model.copy_where, also where the pointed-at token is: left of centre, or right
    where = _built(where_feats=4)
    where.read_where.weight.data.zero_()
    where.read_where.weight.data[0, 0] = 1.0  # the lowest sine feature of x: sin(2 pi x)
    places = torch.tensor([[0.1, 0.5], [0.9, 0.5]])
    assert where.lookup(named, [CIRCLE], tokens, None, places)[1][0] > 0.3
    assert where.lookup(named, [STAR], tokens, None, places)[1][0] < -0.3


def test_the_product_is_a_distribution_that_starts_as_the_llm_and_grows_where_the_copy_is_right():
    torch.manual_seed(0)
    copy = _built()
    hidden, logits = torch.randn(3, 16), torch.randn(3, 10)  # 2 added tokens beyond the 8 words
    table = copy.lookup(_named([RED, CIRCLE], [BLUE, STAR]), [CIRCLE], torch.randn(2, 16))[0].expand(3, -1, -1)
    mixed = copy.mix(hidden, logits, table)
    torch.testing.assert_close(mixed.exp().sum(-1), torch.ones(3))
    torch.testing.assert_close(mixed, logits.log_softmax(-1))  # strength 0: the LLM's own
    # the answer is the copied word: the loss strengthens the copy
    loss = torch.nn.functional.nll_loss(mixed, torch.tensor([RED] * 3))
    loss.backward()
    assert copy.strength.bias.grad < 0
    with torch.no_grad():
        copy.strength.bias.fill_(30.0)
        strong = copy.mix(hidden, logits, table)
    assert torch.isfinite(strong).all()
    assert (strong.argmax(-1) == RED).all() or (strong.argmax(-1) == CIRCLE).all()
    assert strong[:, 8:].exp().max() < 1e-6  # added tokens are not offered


def _vqa_sample(ds):
    """A conversation's first turn (no earlier answers in the instruction)."""
    for i in range(len(ds.sets["vqa"])):
        x = ds.sets["vqa"][i]
        if not x["target"]["context_spans"]:
            return x
    raise AssertionError("no first-turn VQA sample")


@pytest.mark.parametrize("extra", [[], ["model.text_readout=true", "model.token_names_layer=0", "model.copy_where=true"],
                                   ["model.copy_count=true", "model.token_sides=true"]])
def test_in_the_model_closed_it_changes_nothing_open_it_answers_from_the_tokens(shapes_root, tmp_path, extra):
    """As built (strength 0) the model scores and writes text as the one without the copy;
    strong, the first word written is the copy's best; training reaches the strength, the word
    weights and the image tokens; no hook is left on the LLM."""
    model, ds = tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0", "model.named_copy=true"] + extra)
    model.eval()
    sample = _vqa_sample(ds)
    batch = collate([sample, ds.sets["caption"][0]])
    copy = model.named_copy
    (shut_text, shut_loss), (plain_text, plain_loss) = text_with_and_without(model, "named_copy", batch)
    assert shut_text == plain_text
    torch.testing.assert_close(shut_loss, plain_loss)

    single = collate([sample])
    with torch.no_grad():
        copy.strength.bias.fill_(60.0)
        toks, _, v = model._image_tokens(single)
        from visionllm.modeling.decoding import splice_image_tokens

        prefix, valid, ids = splice_image_tokens(model.llm, single["instructions"], v)
        with model._layer_output() as seen:
            model.llm.decoder(inputs_embeds=prefix, use_cache=False)
        asked = question_line(single["instructions"][0])
        table = model._copy_tables(seen.get("out", prefix)[0], ids[0], v[0], toks.layer_logits[-1, 0],
                                   [asked])[asked][0]  # (2 or 3, V)
        # the form gate starts at 1/2: half the copy on in-sentence forms, half on bare ones
        mixed = torch.logaddexp(table[0], table[1]) - math.log(2)
        written = model.predict(single, max_new_tokens=1)[0]["text"]
    assert written == model.llm.tokenizer.decode([int(mixed.argmax())]).strip()

    model.train()
    copy.strength.bias.data.fill_(0.5)  # a little trained: every part of the copy counts
    copy.note_names(model._word_ids(asked))  # as if naming had taught the head these words
    model(batch)["loss"].backward()
    assert copy.strength.bias.grad.abs() > 0 and copy.word_gain.grad.abs().sum() > 0
    assert copy.sharpness.grad is not None
    assert copy.read_value.weight.grad.abs().sum() > 0 and copy.read_score.weight.grad.abs().sum() > 0
    assert copy.read_where is None or copy.read_where.weight.grad.abs().sum() > 0
    if copy.count_ids is not None:
        copy.count_strength.bias.data.fill_(0.5)
        model.zero_grad()
        model(batch)["loss"].backward()
        assert copy.count_strength.bias.grad.abs() > 0 and copy.count_fit.grad.abs() > 0
        assert copy.count_objectness.grad.abs() > 0 and copy.count_bias.grad.abs() > 0
    assert model.token_proj.weight.grad.abs().sum() > 0
    assert all(not layer._forward_hooks for layer in model.llm.decoder.layers)
    assert copy.objectness_weight.grad.abs() > 0
    # a batch without text still touches every copy weight (zero), as FSDP needs; its naming
    # loss teaches the copy the name words (those of the objects' names, nothing else)
    model.zero_grad()
    copy.name_words.zero_()
    detection = ds.sets["detection"][0]
    model(collate([detection]))["loss"].backward()
    assert all(p.grad is not None for p in copy.parameters())
    named = {w for n in detection["target"]["names"] for w in model._word_ids(n)}
    assert set(copy.name_words.nonzero()[:, 0].tolist()) == named


def test_it_needs_token_naming(shapes_root, tmp_path):
    with pytest.raises(InstantiationException, match="needs model.token_names > 0"):
        tiny_model_and_sets(shapes_root, tmp_path, ["model.named_copy=true"])
    with pytest.raises(InstantiationException, match="needs model.named_copy=true"):
        tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0", "model.copy_where=true"])
    with pytest.raises(InstantiationException, match="copy_count .* needs model.named_copy=true"):
        tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0", "model.copy_count=true"])


def test_the_count_is_a_poisson_binomial_over_the_tokens():
    """P(n = k) for independent tokens, exact where it can be checked by hand; it keeps finite
    gradients where a token is surely in or out; the mass past the largest number is dropped."""
    half = count_distribution(torch.zeros(2), 4).exp()
    torch.testing.assert_close(half, torch.tensor([0.25, 0.5, 0.25, 0.0]))
    logit = torch.tensor([30.0, 30.0, -30.0, 0.0], requires_grad=True)
    sure = count_distribution(logit, 5).exp()
    torch.testing.assert_close(sure, torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0]))
    sure[3].backward()
    assert torch.isfinite(logit.grad).all() and logit.grad[3] > 0
    torch.testing.assert_close(count_distribution(torch.full((6,), 30.0), 3).exp(), torch.zeros(3))


def test_the_count_offers_how_many_tokens_are_what_the_question_names():
    """With the count, the copy's third row says at each number word (both forms) how likely
    that many tokens are what the question names; it is 0 at every other word; its strength
    starts at 0, so the model starts as without it, and the answer's loss opens it."""
    torch.manual_seed(0)
    V = 16
    numbers = torch.tensor([[8, 12], [9, 13], [10, 14], [11, -1]])  # 3 has no in-sentence form
    copy = NamedCopy(hidden_size=16, bare_of=torch.arange(V), count_ids=numbers)
    copy.note_names([RED, BLUE, CIRCLE, STAR])
    named = _named([RED, CIRCLE], [BLUE, CIRCLE], [RED, STAR], V=V, strength=8.0)
    objectness = torch.tensor([4.0, 4.0, 4.0])
    table, _ = copy.lookup(named, [WHAT, CIRCLE], torch.randn(3, 16), objectness)
    assert table.shape == (3, V)
    count = table[2]
    assert int(count[8:12].argmax()) == 2  # two circles
    torch.testing.assert_close(count[8:11], count[12:15])
    assert (count[:8] == 0).all() and count[15] == 0
    stars = copy.lookup(named, [STAR], torch.randn(3, 16), objectness)[0][2]
    assert int(stars[8:12].argmax()) == 1
    everything = copy.lookup(named, [WHAT], torch.randn(3, 16), objectness)[0][2]  # names nothing
    assert int(everything[8:12].argmax()) == 3
    hidden, logits = torch.randn(2, 16), torch.randn(2, V + 2)
    mixed = copy.mix(hidden, logits, table.expand(2, -1, -1))
    torch.testing.assert_close(mixed, logits.log_softmax(-1))
    torch.nn.functional.nll_loss(mixed, torch.tensor([10, 10])).backward()  # "2"
    assert copy.count_strength.bias.grad < 0


def test_the_probe_scores_the_pointer_and_the_copy(shapes_root, tmp_path):
    """tools/probe_copy.py: the pointer's hit rates lie in [0, 1], the copy's strength is its
    starting zero, and its mass on the answer a probability."""
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from probe_copy import probe

    model, _ = tiny_model_and_sets(shapes_root, tmp_path, ["model.token_names=1.0", "model.named_copy=true",
                                                           "model.copy_count=true"])
    model.eval()
    cfg = OmegaConf.create({"data": {"image_size": 64}})
    result = probe(model, cfg, conversations=6, data_root=str(shapes_root))
    kinds = {k.split("/")[0] for k in result}
    assert {"color", "count"} <= kinds
    for key, value in result.items():
        how = key.split("/")[1]
        if how in ("copy_strength", "count_strength"):
            assert value == 0.0
        elif how != "questions":
            assert 0.0 <= value <= 1.0, key
    assert result["color/questions"] > 0 and "count/count_right" in result


class _WordTokenizer:
    """A word-level tokenizer over a fixed list, enough for the tables built from a vocabulary."""

    def __init__(self, words):
        self.words = list(words)

    def decode(self, ids):
        return "".join(self.words[i] for i in ids)

    def __call__(self, text, add_special_tokens=False):
        def ids(one):
            return [self.words.index(one)] if one in self.words else [0, 0]

        return {"input_ids": [ids(t) for t in text] if isinstance(text, list) else ids(text)}


def test_plurals_name_what_their_singular_names():
    """"How many stars?" counts the stars: a plural maps to its singular where that is one word
    of the vocabulary, and through it to a name word; other words keep their own ids."""
    words = ["?", " star", " stars", " box", " boxes", " is", " glass", "ellipses", "ellipse", " red", " reds"]
    tok = _WordTokenizer(words)
    singular = singular_forms(tok, len(words))
    named = {words[i]: words[int(singular[i])] for i in range(len(words))}
    assert named[" stars"] == " star" and named[" boxes"] == " box" and named["ellipses"] == "ellipse"
    assert named[" is"] == " is" and named[" glass"] == " glass" and named[" star"] == " star"
    copy = NamedCopy(hidden_size=16, bare_of=torch.arange(len(words)), singular_of=singular)
    copy.note_names([1, 9])  # " star", " red"
    head = _named([9, 1], [9, 3], [9, 1], V=len(words), strength=8.0)
    objectness = torch.full((3,), 4.0)
    plural = copy.lookup(head, [2], torch.randn(3, 16), objectness)[0][0].exp()
    singular_asked = copy.lookup(head, [1], torch.randn(3, 16), objectness)[0][0].exp()
    torch.testing.assert_close(plural, singular_asked)


@pytest.mark.parametrize("extra", [[], ["model.token_names=1.0", "model.named_copy=true"]])
def test_text_may_be_sampled(shapes_root, tmp_path, extra):
    """With a temperature each word is drawn: the same generator seed writes the same text, a
    temperature near zero writes the greedy text, and a negative one is a clear error."""
    model, ds = tiny_model_and_sets(shapes_root, tmp_path, extra)
    model.eval()
    batch = collate([ds.sets["caption"][0]])

    def write(**kw):
        return model.predict(batch, max_new_tokens=6, **kw)[0]["text"]

    drawn = [write(temperature=1.0, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert drawn[0] == drawn[1]
    assert write(temperature=1e-4, generator=torch.Generator().manual_seed(3)) == write()
    with pytest.raises(ValueError, match="temperature"):
        write(temperature=-1.0)
    # several drawn side by side over one cache; near zero temperature, each is the greedy text
    many = model.predict(batch, max_new_tokens=6, temperature=1.0, generator=torch.Generator().manual_seed(3), samples=4)
    assert len(many[0]["texts"]) == 4 and many[0]["text"] == many[0]["texts"][0]
    cold = model.predict(batch, max_new_tokens=6, temperature=1e-4, samples=3)[0]["texts"]
    assert cold == [write()] * 3
    with pytest.raises(ValueError, match="temperature"):
        model.predict(batch, samples=2)
    # no_repeat_ngram: no run of n tokens is written twice, greedy or sampled
    tok = model.llm.tokenizer
    for kw in ({}, {"temperature": 1.0, "generator": torch.Generator().manual_seed(0)}):
        text = model.predict(batch, max_new_tokens=24, no_repeat_ngram=2, **kw)[0]["text"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        pairs = list(zip(ids, ids[1:]))
        assert len(pairs) == len(set(pairs)), text


def test_repeat_closers():
    assert repeat_closers([5, 6, 7, 5, 6], 3) == [7]
    assert repeat_closers([5, 6, 5, 6], 2) == [5]  # after "6", "5" would repeat "6 5"
    assert repeat_closers([1, 2, 3], 4) == [] and repeat_closers([1, 1], 0) == []


def test_the_count_loss_teaches_the_count_even_where_it_is_off(shapes_root, tmp_path):
    """With model.count_loss a number answer also trains the count's own weights directly: at
    the start its strength is 0 (the answer's distribution does not use it) and without the
    loss they get no gradient; with it they do, and it adds -log P(n = answer) to the loss."""
    from visionllm.data.llava import LlavaInstruct
    from visionllm.tasks import vqa

    reader = LlavaInstruct(json_file=shapes_root / "llava/llava_instruct_train.json", image_root=shapes_root)
    samples = [s for i in range(len(reader)) for s in [vqa.training_sample(reader[i], image_size=64,
                                                                          rng=random.Random(0))]
               if s["target"]["text"].strip().rstrip(".").isdigit()][:2]
    assert samples, "the tiny set has count answers"
    grads, losses = {}, {}
    for weight in (0.0, 1.0):
        model, _ = tiny_model_and_sets(shapes_root, tmp_path / str(weight), [
            "model.token_names=1.0", "model.named_copy=true", "model.copy_count=true", f"model.count_loss={weight}"])
        loss = model(collate(samples))["loss_text"]
        loss.backward()
        grads[weight] = float(model.named_copy.count_bias.grad.abs())
        losses[weight] = float(loss)
    assert grads[0.0] == 0.0 and grads[1.0] > 0.0
    assert losses[1.0] > losses[0.0]
    with pytest.raises(InstantiationException, match="count_loss"):
        tiny_model_and_sets(shapes_root, tmp_path / "bad", ["model.token_names=1.0", "model.named_copy=true",
                                                            "model.count_loss=1.0"])


def test_the_count_also_says_whether_there_is_one():
    """With ``exist_ids`` the count's row also says "no" at P(n = 0) and "yes" at P(n > 0), in
    both forms: a question about a circle (two of them) leans to "yes", one about something no
    token names (a blue circle is not there) to "no"; the two add up to one."""
    torch.manual_seed(0)
    V = 20
    numbers = torch.tensor([[8, 12], [9, 13], [10, 14], [11, -1]])
    exist = torch.tensor([[16, 18], [17, 19]])  # "no", " no"; "yes", " yes"
    with pytest.raises(ValueError, match="count"):
        NamedCopy(hidden_size=16, bare_of=torch.arange(V), exist_ids=exist)
    copy = NamedCopy(hidden_size=16, bare_of=torch.arange(V), count_ids=numbers, exist_ids=exist)
    copy.note_names([RED, BLUE, CIRCLE, STAR])
    named = _named([RED, CIRCLE], [RED, CIRCLE], [RED, STAR], V=V, strength=8.0)
    objectness = torch.zeros(3)  # the count's weights as they start: q_i = sigmoid(s_i + o_i)
    circles = copy.lookup(named, [WHAT, CIRCLE], torch.randn(3, 16), objectness)[0][2]
    blue_circles = copy.lookup(named, [WHAT, BLUE, CIRCLE], torch.randn(3, 16), objectness)[0][2]
    for row in (circles, blue_circles):
        torch.testing.assert_close(row[16], row[8])  # "no" is "0"
        torch.testing.assert_close(row[[16, 18]], row[[8, 8]])
        torch.testing.assert_close(row[16].exp() + row[17].exp(), torch.tensor(1.0))
        torch.testing.assert_close(row[17], row[19])
    assert circles[17] > circles[16] and blue_circles[16] > blue_circles[17]
    assert set(copy.count_words.tolist()) == {8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19}
    # without it the row is 0 at those words, as at every word that is not a number
    plain = NamedCopy(hidden_size=16, bare_of=torch.arange(V), count_ids=numbers)
    plain.note_names([RED, BLUE, CIRCLE, STAR])
    assert (plain.lookup(named, [WHAT, CIRCLE], torch.randn(3, 16), objectness)[0][2][16:] == 0).all()


def test_the_count_loss_teaches_existence_answers_with_count_exist(shapes_root, tmp_path):
    """model.count_exist: an existence answer ("yes"/"no") also trains the count's own weights
    through the count loss; without the option it does not."""
    from visionllm.data.llava import LlavaInstruct
    from visionllm.tasks import vqa

    def existence_only(item):  # the conversation's existence turns alone (no number answers)
        turns = item["conversations"]
        pairs = [(q["value"].replace("<image>\n", ""), a["value"]) for q, a in zip(turns[::2], turns[1::2])
                 if a["value"].strip().lower() in ("yes", "no")]
        if not pairs:
            return None
        convs = [t for q, a in pairs for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
        convs[0] = {"from": "human", "value": "<image>\n" + convs[0]["value"]}
        return {**item, "conversations": convs}

    reader = LlavaInstruct(json_file=shapes_root / "llava/llava_instruct_train.json", image_root=shapes_root)
    items = [x for x in (existence_only(reader[i]) for i in range(len(reader))) if x is not None][:2]
    assert items, "the tiny set has existence answers"
    samples = [vqa.training_sample(x, image_size=64, rng=random.Random(0)) for x in items]
    grads = {}
    for on in (False, True):
        model, _ = tiny_model_and_sets(shapes_root, tmp_path / str(on), [
            "model.token_names=1.0", "model.named_copy=true", "model.copy_count=true", "model.count_loss=1.0",
            f"model.count_exist={str(on).lower()}", "tokenizer_vocab_size=800"])  # "yes" and "no" one token each
        model(collate(samples))["loss_text"].backward()
        grads[on] = float(model.named_copy.count_bias.grad.abs())
    assert grads[False] == 0.0 and grads[True] > 0.0
    with pytest.raises(InstantiationException, match="count_exist"):
        tiny_model_and_sets(shapes_root, tmp_path / "bad", ["model.token_names=1.0", "model.named_copy=true",
                                                            "model.count_exist=true"])


def test_existence_from_the_count_can_be_switched_at_answer_time(shapes_root, tmp_path):
    """named_copy.count_existence: a model built with the count but without count_exist answers
    existence from the count within the block (its loss on an existence answer changes, as the
    count now speaks at "yes" and "no") and as before after it; a model without the count
    refuses with the option's name. ``task.vqa.count_exist`` is off unless a run sets it, and
    experiment=shapes sets it."""
    from omegaconf import OmegaConf

    from tests.helpers import compose_cfg
    from visionllm.engine.tasks import task_options
    from visionllm.modeling.named_copy import count_existence, set_count_existence

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, [
        "model.token_names=1.0", "model.named_copy=true", "model.copy_count=true", "tokenizer_vocab_size=800"])
    model.eval()
    model.named_copy.count_strength.bias.data.fill_(2.0)  # the count speaks at its words
    samples = [s for s in (ds.sets["vqa"][i] for i in range(len(ds.sets["vqa"])))
               if s["target"]["text"].strip().lower() in ("yes", "no")][:2]
    assert samples, "the tiny set has existence answers"
    batch = collate(samples)
    with torch.no_grad():
        before = float(model(batch)["loss_text"])
        with count_existence(model, True):
            assert model.named_copy.exist_ids is not None
            switched = float(model(batch)["loss_text"])
        after = float(model(batch)["loss_text"])
    assert switched != pytest.approx(before) and after == pytest.approx(before)
    assert model.named_copy.exist_ids is None
    plain, _ = tiny_model_and_sets(shapes_root, tmp_path / "plain", ["model.token_names=1.0", "model.named_copy=true"])
    with pytest.raises(ValueError, match="task.vqa.count_exist"):
        set_count_existence(plain, True)
    assert task_options(OmegaConf.create({"task": {}}), "vqa")["count_exist"] is None
    assert compose_cfg("train", ["experiment=shapes"]).task.vqa.count_exist is True
