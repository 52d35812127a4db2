"""A few real training steps, a checkpoint, COCO evaluation and the user's commands."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_model_and_sets, tiny_train_cfg
from visionllm.api import VisionLLM
from visionllm.engine.checkpoint import load_model
from visionllm.engine.train import train
from visionllm.evaluation.detection import evaluate_detection
from visionllm.vocab import LOC_HALF

ROOT = Path(__file__).resolve().parents[1]
QUERY = ("Find every object of {'circle': <c0>, 'star': <c1>, 'what is the odd one out?': <c2>} in <image>, "
         "each as (c, x1, y1, x2, y2) with coordinates from 0 to 1024.")


@pytest.fixture(scope="module")
def trained(shapes_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_train_cfg(shapes_root, out, ["trainer.max_steps=4", "trainer.eval_every=4", "trainer.checkpoint_every=4"])
    metrics = train(cfg)
    return out, metrics


def test_training_writes_everything(trained):
    out, metrics = trained
    assert {"bbox_AP", "bbox_AP50"} <= set(metrics)
    for f in ["checkpoint/model.safetensors", "checkpoint/config.yaml", "checkpoint/tokenizer/tokenizer.json",
              "metrics.json", "history.json", "config.yaml", "checkpoints/step_0000004/trainer_state.pt"]:
        assert (out / f).exists(), f
    hist = json.loads((out / "history.json").read_text())
    losses = [h["loss"] for h in hist if "loss" in h]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_training_steps_change_weights_and_lower_loss(shapes_root, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_train_cfg(shapes_root, tmp_path, ["trainer.max_steps=1"])
    from hydra.utils import instantiate

    from visionllm.data.transforms import collate
    from visionllm.engine import tasks
    from visionllm.engine.train import absolutize, prepare_tokenizer, tokenizer_corpus

    absolutize(cfg)
    ds, vocabulary = tasks.training_set(cfg)
    prepare_tokenizer(cfg, tokenizer_corpus(ds, vocabulary))
    model = instantiate(cfg.model)
    batch = collate([ds[i] for i in range(4)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = model(batch)["loss"].item()
    for _ in range(15):  # one fixed batch: the loss must fall
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(batch)["loss"].item() < before


def test_checkpoint_round_trip_predicts_the_same(trained, shapes_root, tmp_path):
    """Also from a copy elsewhere whose run directory has gone: the checkpoint carries its tokenizer."""
    import shutil

    out, _ = trained
    model, cfg = load_model(out / "checkpoint")
    from hydra.utils import instantiate

    cfg.data.root = str(shapes_root)
    reader = instantiate(cfg.data.val.detection)
    m1, res1, table = evaluate_detection(model, reader, image_size=cfg.data.image_size, chunk=8, batch_size=4, max_images=3, progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(out / "checkpoint", moved)
    text = (moved / "config.yaml").read_text()
    assert str(out / "tokenizer") in text  # the resolved config names the run's own copy...
    (moved / "config.yaml").write_text(text.replace(str(out / "tokenizer"), str(tmp_path / "gone")))
    model2, _ = load_model(moved)  # ...which the checkpoint does not need
    m2, res2, _ = evaluate_detection(model2, reader, image_size=cfg.data.image_size, chunk=8, batch_size=4, max_images=3, progress=False)
    assert res1 == res2 and m1 == m2
    # each group's two likeliest classes: every first answer again, and one more a group
    m3, res3, _ = evaluate_detection(model, reader, image_size=cfg.data.image_size, chunk=8, batch_size=4, max_images=3,
                                     progress=False, classes_per_group=2)
    key = lambda r: (r["image_id"], r["category_id"], tuple(round(v, 4) for v in r["bbox"]), round(r["score"], 5))  # noqa: E731
    assert len(res3) == 2 * len(res1) and {key(r) for r in res1} <= {key(r) for r in res3}
    # coordinates read around the likeliest bin: the same answers, each corner within the window
    _, res4, _ = evaluate_detection(model, reader, image_size=cfg.data.image_size, chunk=8, batch_size=4, max_images=3,
                                    progress=False, location_window=4)
    assert [(r["category_id"], r["score"]) for r in res4] == [(r["category_id"], r["score"]) for r in res1]
    side = max(max(im["width"], im["height"]) for im in reader.coco.dataset["images"])
    corners = lambda r: torch.tensor([r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]])  # noqa: E731
    shift = torch.stack([(corners(a) - corners(b)).abs() for a, b in zip(res1, res4)])
    assert shift.max() <= 4 / LOC_HALF * side + 1e-3 and shift.max() > 0
    assert 0.0 <= m1["bbox_AP"] <= 1.0 and "Average Precision" in table
    # results are a COCO results file
    dt = reader.coco.loadRes(res1)
    assert len(dt.anns) == len(res1) > 0
    assert {r["category_id"] for r in res1} <= {c["id"] for c in reader.categories}


def test_api_any_image_size_and_mode(trained):
    out, _ = trained
    model = VisionLLM.from_pretrained(out / "checkpoint", device="cpu")
    rng = np.random.default_rng(0)
    for size, mode in [((37, 500), "L"), ((640, 120), "RGBA"), ((64, 64), "RGB"), ((1, 1), "RGB")]:
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
        assert img.mode == mode
        ans = model.predict(img, QUERY, score_threshold=0.0)
        assert ans["text"].startswith("[") and len(ans["objects"]) > 0
        for o in ans["objects"]:
            x1, y1, x2, y2 = o["bbox"]
            assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]
            assert o["label"] in {"circle", "star", "what is the odd one out?"} and 0 <= o["score"] <= 1
    poly = model.predict(img, "Outline each {'circle': <c0>} in <image> as (c, x1, y1, ..., x8, y8).", score_threshold=0.0)
    assert poly["objects"] and all(len(o["polygon"]) == 8 for o in poly["objects"])
    text = model.predict(img, "Describe <image> briefly.")
    assert isinstance(text["text"], str) and text["objects"] == []


def _run(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def test_infer_command_takes_the_paper_instruction(trained, tmp_path):
    out, _ = trained
    img = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 150, 3), dtype=np.uint8)).save(img)
    r = _run(["tools/infer.py", f"checkpoint={out / 'checkpoint'}", f"image={img}", f"instruction={QUERY}",
              f"output={tmp_path / 'a.json'}", f"visualize={tmp_path / 'a.png'}", "score_threshold=0.0"])
    assert r.returncode == 0, r.stderr[-2000:]
    ans = json.loads((tmp_path / "a.json").read_text())
    assert set(ans) == {"text", "objects"} and ans["objects"]
    assert Image.open(tmp_path / "a.png").size[0] >= 150


def test_infer_command_explains_bad_input(trained, tmp_path):
    out, _ = trained
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    r = _run(["tools/infer.py", f"checkpoint={out / 'checkpoint'}", f"image={bad}", f"instruction={QUERY}"])
    assert r.returncode != 0 and "cannot read image" in r.stderr
    good = tmp_path / "ok.png"
    Image.new("RGB", (20, 20)).save(good)
    r = _run(["tools/infer.py", f"checkpoint={out / 'checkpoint'}", f"image={good}", "instruction=find {'a': <c0>} in <image>"])
    assert r.returncode != 0 and "output format" in r.stderr


def test_eval_command(trained, shapes_root, tmp_path):
    out, _ = trained
    r = _run(["tools/eval.py", f"checkpoint={out / 'checkpoint'}", "task=detection", "data=shapes",
              f"data.root={shapes_root}", f"output_dir={tmp_path}", "max_images=2"])
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "bbox_AP" in metrics and "bbox_AP50" in metrics
    assert isinstance(json.loads((tmp_path / "detections.json").read_text()), list)


def test_all_five_tasks_train_and_evaluate(shapes_root, tmp_path):
    """One mixture of every task: each task's samples go through one forward/backward, and
    each evaluator runs on the model."""
    from hydra.utils import instantiate

    from visionllm.data.transforms import collate
    from visionllm.engine import tasks
    from visionllm.engine.train import absolutize, evaluate_all, prepare_tokenizer, tokenizer_corpus

    cfg = tiny_train_cfg(shapes_root, tmp_path, ["task=all"])
    absolutize(cfg)
    ds, vocabulary = tasks.training_set(cfg)
    assert set(ds.names) == set(tasks.TASKS)
    prepare_tokenizer(cfg, tokenizer_corpus(ds, vocabulary))
    model = instantiate(cfg.model)
    batch = collate([ds.sets[name][i] for name in tasks.TASKS for i in range(2)])
    kinds = {r.kind for r in batch["requests"]}
    assert kinds == {"boxes", "polygons", "text"}
    losses = model(batch)
    assert {"loss_text", "loss_cls", "loss_loc_ce", "loss_tok_obj"} <= set(losses)
    losses["loss"].backward()
    readers = {name: tasks.reader(cfg, "val", name) for name in tasks.TASKS}
    metrics, table = evaluate_all(model, cfg, readers, max_images=2)
    for key in ["bbox_AP", "segm_AP", "grounding_P@0.5", "caption_CIDEr", "caption_length_error", "vqa_accuracy"]:
        assert key in metrics, key


@pytest.mark.parametrize("only", [["caption", "vqa"], ["detection"], ["grounding", "segmentation"]])
def test_every_trainable_tensor_gets_a_gradient_whatever_the_batch(shapes_root, tmp_path, only):
    """FSDP reduce-scatters the same gradients on every rank, so no batch may leave a trainable
    tensor without one (text-only batches, box-only batches)."""
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path)
    batch = collate([ds.sets[name][i] for name in only for i in range(2)])
    model(batch)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:10]


def test_point_features_read_the_finest_level_under_each_token(shapes_root, tmp_path):
    """point_features: each token's embedding gains point_proj(finest level at its location l_i);
    with a finest level that holds its own x coordinate, what is added is l_i's x, and
    point_proj learns from every batch."""
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, ["model.image_tokenizer.point_features=true"])
    tok = model.image_tokenizer
    batch = collate([ds.sets["detection"][i] for i in range(2)])
    model(batch)["loss"].backward()
    assert tok.point_proj.weight.grad is not None and tok.point_proj.weight.grad.abs().sum() > 0

    def x_coordinate(module, inputs, levels):  # the finest level becomes its cells' x centres
        lvl = levels[0]
        W = lvl.shape[-1]
        xs = (torch.arange(W, dtype=lvl.dtype) + 0.5) / W
        return [xs.expand_as(lvl).contiguous(), *levels[1:]]

    with torch.no_grad():
        tok.point_proj.weight.zero_()
        tok.point_proj.weight[:, 0] = 1.0
        tok.point_proj.bias.zero_()
        tok.eval()
        hook = tok.backbone.register_forward_hook(x_coordinate)
        plain = tok.point_proj
        tok.point_proj = None
        without = tok(batch["images"], batch["pixel_mask"], batch["instructions"])
        tok.point_proj = plain
        with_pf = tok(batch["images"], batch["pixel_mask"], batch["instructions"])
        hook.remove()
    added = with_pf.embeds - without.embeds  # every channel gets the sampled x
    assert torch.equal(with_pf.points, without.points)  # the decoder itself is untouched
    x = with_pf.points[..., 0]
    inside = (x > 0.1) & (x < 0.9)  # bilinear sampling of a linear ramp is exact away from the border
    assert inside.sum() > 0
    torch.testing.assert_close(added[..., 0][inside], x[inside], atol=1e-4, rtol=0)


def test_deformable_checkpointing_gives_the_same_gradients(shapes_root, tmp_path):
    from visionllm.data.transforms import collate

    grads = []
    for on in (False, True):
        model, ds = tiny_model_and_sets(shapes_root, tmp_path, [f"model.image_tokenizer.checkpointing={on}"])
        assert model.image_tokenizer.checkpointing is on
        batch = collate([ds.sets[name][i] for name in ("detection", "caption") for i in range(2)])
        model(batch)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_specialist_trains_its_tokenizer_like_the_generalist(shapes_root, tmp_path):
    """The baseline: Deformable DETR losses plus the tokenizer's own; every tensor learns, and it
    answers only its own categories."""
    from hydra.utils import instantiate

    from helpers import TINY, compose_cfg
    from visionllm.data.transforms import collate
    from visionllm.engine import tasks
    from visionllm.engine.train import _due, absolutize, prepare_tokenizer, tokenizer_corpus

    cfg = compose_cfg("train", ["experiment=shapes_specialist", f"data.root={shapes_root}", f"output_dir={tmp_path}",
                                *[t for t in TINY if ".llm." not in t]])
    absolutize(cfg)
    ds, vocabulary = tasks.training_set(cfg)
    prepare_tokenizer(cfg, tokenizer_corpus(ds, vocabulary))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    batch = collate([ds[i] for i in range(3)])
    losses = model(batch)
    assert {"loss_cls", "loss_l1", "loss_giou", "loss_tok_obj", "loss_tok_point"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:10]
    model.eval()
    out = model.predict(batch)
    assert out[0]["points"].shape == (model.image_tokenizer.num_queries, 2, 2)
    bad = dict(batch, requests=[r.__class__(kind="boxes", classes=["zebra"], num_points=2) for r in batch["requests"]])
    with pytest.raises(ValueError, match="zebra"):
        model.predict(bad)
    assert _due(4, 2) and not _due(3, 2) and not _due(4, 0)  # eval_every=0: only after the last step


def test_the_specialist_as_a_first_stage_also_names_colours(shapes_root, tmp_path):
    """model.attributes: each matched token also learns its object's colour word (a loss that
    falls when trained on, ignoring objects whose name holds no listed word); the baseline
    (null) has no such head; a list of one word is refused."""
    from hydra.utils import instantiate

    from helpers import TINY, compose_cfg
    from visionllm.data.transforms import collate
    from visionllm.engine import tasks
    from visionllm.engine.train import absolutize, prepare_tokenizer, tokenizer_corpus
    from visionllm.modeling.specialist import DetrSpecialist

    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    cfg = compose_cfg("train", ["experiment=shapes_specialist", f"data.root={shapes_root}", f"output_dir={tmp_path}",
                                f"model.attributes=[{','.join(colours)}]",
                                *[t for t in TINY if ".llm." not in t]])
    absolutize(cfg)
    ds, vocabulary = tasks.training_set(cfg)
    prepare_tokenizer(cfg, tokenizer_corpus(ds, vocabulary))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert model._attribute_targets(["red circle", "circle", "red blue square", "big green star"]) == [0, -100, -100, 1]
    batch = collate([ds[i] for i in range(4)])
    assert any(w in n for t in batch["targets"] for n in t["names"] for w in colours)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        losses = model(batch)
        first = first if first is not None else losses["loss_attr"].item()
        opt.zero_grad()
        losses["loss"].backward()
        assert model.attribute_head.weight.grad.abs().sum() > 0
        opt.step()
    assert losses["loss_attr"].item() < 0.7 * first
    baseline = compose_cfg("train", ["experiment=shapes_specialist", f"output_dir={tmp_path}",
                                     *[t for t in TINY if ".llm." not in t]])
    assert baseline.model.attributes is None
    with pytest.raises(ValueError, match="two or more"):
        DetrSpecialist(image_tokenizer=model.image_tokenizer, categories=["circle"], attributes=["red"])


def test_a_later_stage_takes_the_earlier_stages_tokenizer(tmp_path):
    """trainer.init_from: the embedding rows of the earlier run belong to its token ids, so a
    later stage with another task mixture (another corpus) must not train a tokenizer of its own."""
    import json as _json

    from omegaconf import OmegaConf

    from visionllm.engine.train import prepare_tokenizer

    def cfg(tok_dir, init_from=None):
        return OmegaConf.create({"tokenizer_dir": str(tok_dir), "tokenizer_vocab_size": 300,
                                 "model": {"llm": {"pretrained": None}}, "trainer": {"init_from": init_from}})

    boxes = ["Find every circle, square and star in the image as boxes."] * 50
    answers = ["How many hexagons are there? Two. What colour is the ellipse? Purple."] * 50
    prepare_tokenizer(cfg(tmp_path / "stage1" / "tokenizer"), boxes)
    (tmp_path / "stage1" / "config.yaml").write_text("tokenizer_dir: tokenizer\n")  # as a checkpoint has it
    prepare_tokenizer(cfg(tmp_path / "fresh"), answers)
    prepare_tokenizer(cfg(tmp_path / "stage2", init_from=str(tmp_path / "stage1")), answers)

    def vocab(d):
        return _json.loads((d / "tokenizer.json").read_text())["model"]["vocab"]

    assert vocab(tmp_path / "stage2") == vocab(tmp_path / "stage1" / "tokenizer")
    assert vocab(tmp_path / "fresh") != vocab(tmp_path / "stage1" / "tokenizer")  # the corpus matters


def test_every_answer_of_a_conversation_is_learned(shapes_root, tmp_path):
    """A VQA sample asking turn t also learns the t earlier answers written in its instruction:
    loss_text is the mean cross-entropy over those tokens and the asked answer's, as the plain
    causal LM computes it on the same sequence with every other label masked."""
    from visionllm.data.transforms import collate
    from visionllm.modeling.decoding import span_positions, splice_image_tokens

    model, ds = tiny_model_and_sets(shapes_root, tmp_path)
    model.eval()
    sample = next(s for s in (ds.sets["vqa"][i] for i in range(200)) if len(s["target"]["context_spans"]) >= 2)
    batch = collate([sample])
    loss = model(batch)["loss_text"]
    _, _, v = model._image_tokens(batch)
    prefix, _, ids = splice_image_tokens(model.llm, batch["instructions"], v)
    ans = model._answer_ids(sample["target"]["text"])
    vocab = model.llm.vocab
    # prefix, <bos>, the answer (its last token only as a label: HF drops the last position's logits)
    embeds = torch.cat([prefix[0], model.llm.embed(torch.tensor([vocab.bos] + ans))])[None]
    labels = torch.full(embeds.shape[:2], -100)
    text = sample["instruction"]
    pos = span_positions(model.llm, text, sample["target"]["context_spans"], v.shape[1])
    assert pos and all(model.llm.tokenizer.decode(ids[0, span_positions(model.llm, text, [(a, b)], v.shape[1])]).strip() == text[a:b]
                       for a, b in sample["target"]["context_spans"])
    labels[0, pos] = ids[0, pos]
    n = prefix.shape[1]
    labels[0, n + 1 : n + 1 + len(ans)] = torch.tensor(ans)  # HF shifts: the label at t is predicted at t - 1
    expected = model.llm.model(inputs_embeds=embeds, labels=labels).loss
    assert torch.allclose(loss, expected, atol=1e-5), (loss, expected)
    # and without the earlier answers, only the asked one counts: a different loss
    sample["target"]["context_spans"] = []
    assert not torch.allclose(model(collate([sample]))["loss_text"], loss)


@pytest.mark.parametrize("decoder_text", [False, True])
def test_decoder_text_lets_the_queries_read_the_instruction(shapes_root, tmp_path, decoder_text):
    """decoder_text: with the encoder's own text attention silenced, the tokens still change
    with the referring expression, through the decoder's; without it they cannot."""
    from visionllm.data.transforms import collate
    from visionllm.tasks import grounding

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, [f"model.image_tokenizer.decoder_text={decoder_text}"])
    tok = model.image_tokenizer.eval()
    with torch.no_grad():
        for layer in tok.encoder:
            layer.text_attn.out_proj.weight.zero_()
            layer.text_attn.out_proj.bias.zero_()
    sample = ds.sets["grounding"][0]
    batch = collate([sample, sample])
    batch["instructions"] = [grounding.make_instruction(e, template=grounding.TEMPLATES[0])
                             for e in ("the red circle", "the blue square")]
    with torch.no_grad():
        out = tok(batch["images"], batch["pixel_mask"], batch["instructions"])
    moved = (out.embeds[0] - out.embeds[1]).abs().max().item()
    if decoder_text:
        assert moved > 1e-3
        assert all(layer.text_attn is not None for layer in tok.decoder)
    else:
        assert moved < 1e-5


def test_token_scale_puts_image_tokens_at_the_word_embeddings_scale(shapes_root, tmp_path):
    """token_scale=embedding: every v_i starts with the RMS of the LLM's word embeddings (free:
    tens of times larger) and the gain learns."""
    from visionllm.data.transforms import collate
    from visionllm.modeling.visionllm import VisionLLM

    batch = None
    rms = {}
    for scale in ("free", "embedding"):
        model, ds = tiny_model_and_sets(shapes_root, tmp_path / scale, [f"model.token_scale={scale}"])
        batch = batch or collate([ds.sets["detection"][0], ds.sets["vqa"][0]])
        words = model.llm.embed(torch.arange(model.llm.vocab.image)).detach().pow(2).mean().sqrt()
        _, _, v = model._image_tokens(batch)
        rms[scale] = (v.detach().pow(2).mean(-1).sqrt() / words)
        if scale == "embedding":
            model(batch)["loss"].backward()
            assert model.token_gain.grad is not None and model.token_gain.grad.abs() > 0
    torch.testing.assert_close(rms["embedding"], torch.ones_like(rms["embedding"]), rtol=1e-3, atol=0)
    assert rms["free"].min() > 5  # what it replaces: image tokens far above the words
    with pytest.raises(ValueError, match="token_scale"):
        VisionLLM(image_tokenizer=model.image_tokenizer, llm=model.llm, token_scale="loud")


def test_one_object_per_class_for_referring_expressions():
    from visionllm.api import best_per_class, check_per_class

    objs = [{"label": "the red circle", "score": 0.5}, {"label": "the star", "score": 0.9},
            {"label": "the red circle", "score": 0.8}, {"label": "the star", "score": 0.4}]
    assert [(o["label"], o["score"]) for o in best_per_class(objs, 1)] == [("the star", 0.9), ("the red circle", 0.8)]
    assert best_per_class(objs, None) == objs
    assert len(best_per_class(objs, 2)) == 4
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="per_class"):
            check_per_class(bad)


def test_infer_command_one_box_per_expression(trained, tmp_path):
    out, _ = trained
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(img)
    ask = ("Find the objects in <image> described by {'the red circle': <c0>, 'the star': <c1>}, one bounding box "
           "each as (c, x1, y1, x2, y2) with coordinates from 0 to 1000.")
    r = _run(["tools/infer.py", f"checkpoint={out / 'checkpoint'}", f"image={img}", f"instruction={ask}",
              f"output={tmp_path / 'a.json'}", "score_threshold=0.0", "per_class=1"])
    assert r.returncode == 0, r.stderr[-2000:]
    labels = [o["label"] for o in json.loads((tmp_path / "a.json").read_text())["objects"]]
    assert sorted(labels) == ["the red circle", "the star"]
    r = _run(["tools/infer.py", f"checkpoint={out / 'checkpoint'}", f"image={img}", f"instruction={ask}", "per_class=0"])
    assert r.returncode != 0 and "per_class" in r.stderr
