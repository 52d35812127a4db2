"""Real weights from local directories (METHOD.md §4): tiny LLaMA, BERT and ResNet checkpoints
saved the way published ones are, loaded through the training config, trained two steps, and
exported as a peft adapter and as a merged transformers model with the same logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from datasets_prep.shapes.scene import SHAPES
from helpers import tiny_train_cfg
from visionllm.engine.adapters import load_lora_adapter, merge_lora, save_lora_adapter
from visionllm.engine.checkpoint import load_model
from visionllm.engine.train import train
from visionllm.modeling.backbone import Backbone
from visionllm.modeling.llm import LLM
from visionllm.modeling.text_encoder import TextEncoder
from visionllm.tasks import detection
from visionllm.text_tokenizer import load_tokenizer, train_text_tokenizer

ROOT = Path(__file__).resolve().parents[1]
LLM_HIDDEN = 48  # not the config's 64: a pretrained directory's own sizes win
# what the tiny tokenizers learn from: instructions naming the shapes, and the names alone
CORPUS = [detection.make_instruction(SHAPES[:k], template=t) for t in detection.TEMPLATES for k in (1, 3, 6)] + SHAPES


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """A tiny LLaMA and BERT (each with its tokenizer) and a timm ResNet state dict, on disk."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    llama_dir, bert_dir = root / "llama", root / "bert"
    train_text_tokenizer(CORPUS, llama_dir, vocab_size=400)
    tok = load_tokenizer(llama_dir)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=LLM_HIDDEN, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    llama.save_pretrained(llama_dir)
    train_text_tokenizer(CORPUS, bert_dir, vocab_size=300)
    bert_tok = load_tokenizer(bert_dir)
    bert = BertModel(BertConfig(vocab_size=len(bert_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=256, pad_token_id=bert_tok.pad_token_id),
                     add_pooling_layer=False)
    bert.save_pretrained(bert_dir)
    resnet = timm.create_model("resnet10t", pretrained=False)  # with its classifier, as published
    backbone_file = root / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(backbone_file))
    return {"llama_dir": llama_dir, "bert_dir": bert_dir, "backbone_file": backbone_file,
            "llama": llama.state_dict(), "bert": bert.state_dict(), "resnet": resnet.state_dict()}


def _cfg(shapes_root, weights, out):
    return tiny_train_cfg(shapes_root, out, [
        f"model.llm.pretrained={weights['llama_dir']}", f"model.llm.tokenizer.path={weights['llama_dir']}",
        f"model.text_encoder.pretrained={weights['bert_dir']}", f"model.text_encoder.tokenizer.path={weights['bert_dir']}",
        f"model.backbone.checkpoint={weights['backbone_file']}", "model.llm.train_base=false",
        "trainer.max_steps=2", "trainer.eval_max_images=2",
    ])


@pytest.fixture(scope="module")
def trained(shapes_root, weights, tmp_path_factory):
    """Two training steps through ``train(cfg)``; returns the checkpoint directory."""
    out = tmp_path_factory.mktemp("run")
    train(_cfg(shapes_root, weights, out))
    ckpts = sorted(p.parent for p in out.glob("**/model.safetensors"))
    assert ckpts, f"no checkpoint under {out}"
    return ckpts[-1]


def test_pretrained_weights_are_loaded(shapes_root, weights, tmp_path):
    model = instantiate(_cfg(shapes_root, weights, tmp_path).model)
    llm = model.llm.model.get_base_model()
    assert model.llm.hidden_size == LLM_HIDDEN and model.token_proj.out_features == LLM_HIDDEN
    torch.testing.assert_close(llm.model.layers[1].mlp.up_proj.weight, weights["llama"]["model.layers.1.mlp.up_proj.weight"])
    torch.testing.assert_close(llm.model.layers[0].self_attn.q_proj.base_layer.weight,
                               weights["llama"]["model.layers.0.self_attn.q_proj.weight"])
    n_old = weights["llama"]["model.embed_tokens.weight"].shape[0]
    emb = model.llm.model.get_input_embeddings().token_adapter.base_layer.weight
    torch.testing.assert_close(emb[:n_old], weights["llama"]["model.embed_tokens.weight"])  # old rows kept
    assert emb.shape[0] == len(model.llm.tokenizer) > n_old  # grown by the VisionLLM tokens
    bert = model.image_tokenizer.text_encoder.bert
    torch.testing.assert_close(bert.encoder.layer[0].attention.self.query.weight,
                               weights["bert"]["encoder.layer.0.attention.self.query.weight"])
    body = dict(model.image_tokenizer.backbone.body.named_parameters())
    torch.testing.assert_close(body["layer4.0.conv2.weight"], weights["resnet"]["layer4.0.conv2.weight"])
    names = {n: p.requires_grad for n, p in model.llm.named_parameters()}
    assert any("lora_A" in n for n in names) and all(g for n, g in names.items() if "lora_" in n)
    frozen = [n for n, g in names.items() if "lora_" not in n and "trainable_tokens_delta" not in n]
    assert frozen and not any(names[n] for n in frozen)  # the base is frozen
    assert all(g for n, g in names.items() if "trainable_tokens_delta" in n)  # new rows train


def test_two_training_steps(trained, weights):
    assert (trained / "model.safetensors").is_file()
    model, cfg = load_model(trained)
    lora_b = [p for n, p in model.llm.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # LoRA's B starts at zero: it trained
    base = model.llm.model.get_base_model().model.layers[1].mlp.down_proj.weight
    torch.testing.assert_close(base, weights["llama"]["model.layers.1.mlp.down_proj.weight"])  # frozen, reloaded


def _logits(lm, tokenizer, ids=None):
    vocab_ids = tokenizer.convert_tokens_to_ids(["<image>", "<c0>", "<c3>", "<p-512>", "<p0>", "<p17>", "<x1>"])
    ids = torch.tensor([tokenizer("a red circle and a star", add_special_tokens=False)["input_ids"] + vocab_ids])
    with torch.no_grad():
        return lm(input_ids=ids).logits


def test_adapter_and_merge_give_the_same_logits(trained, weights, tmp_path):
    model, _ = load_model(trained)
    tok = model.llm.tokenizer
    expected = _logits(model.llm.model, tok)

    adapter = save_lora_adapter(model, tmp_path / "adapter", weights["llama_dir"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(weights["llama_dir"]).resolve())
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    from safetensors.torch import load_file

    keys = list(load_file(str(adapter / "adapter_model.safetensors")))
    assert any("lora_A" in k for k in keys) and any("trainable_tokens_delta" in k for k in keys)
    assert not any(k.endswith("embed_tokens.weight") or k.endswith("lm_head.weight") for k in keys)  # rows only
    peft_model, adapter_tok = load_lora_adapter(adapter)
    assert len(adapter_tok) == len(tok)
    torch.testing.assert_close(_logits(peft_model, adapter_tok), expected, atol=1e-4, rtol=1e-4)

    merged_dir = merge_lora(trained, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    merged_tok = load_tokenizer(merged_dir)
    assert merged_tok.convert_tokens_to_ids("<c0>") == tok.convert_tokens_to_ids("<c0>")
    torch.testing.assert_close(_logits(merged, merged_tok), expected, atol=1e-4, rtol=1e-4)
    # the new rows of the merged model are the trained ones, in the input embedding and the head
    for layer, merged_layer in ((model.llm.model.get_input_embeddings(), merged.get_input_embeddings()),
                                (model.llm.model.get_output_embeddings(), merged.get_output_embeddings())):
        idx = layer.token_adapter.token_indices["default"]
        torch.testing.assert_close(merged_layer.weight[idx], layer.token_adapter.trainable_tokens_delta["default"])
        assert not torch.equal(merged_layer.weight[idx], layer.token_adapter.trainable_tokens_original["default"])


def test_merge_command(trained, tmp_path):
    cmd = [sys.executable, "tools/merge_lora.py", f"checkpoint={trained}", f"output={tmp_path / 'm'}",
           f"adapter={tmp_path / 'a'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "a" / "adapter_config.json").is_file()
    bad = subprocess.run([sys.executable, "tools/merge_lora.py", f"checkpoint={tmp_path / 'nowhere'}", "output=x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode != 0 and "nowhere" in bad.stderr


def test_missing_or_incomplete_directories(weights, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    tok = load_tokenizer(weights["llama_dir"])
    with pytest.raises(FileNotFoundError, match=str(empty)):
        LLM(tokenizer=tok, pretrained=str(empty))
    with pytest.raises(FileNotFoundError, match=str(empty)):
        TextEncoder(tokenizer=tok, pretrained=str(empty))
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        Backbone(name="resnet10t", d_model=32, checkpoint=str(tmp_path / "nothing.safetensors"))
    with pytest.raises(FileNotFoundError, match=str(empty)):
        merge_lora(empty, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=str(empty)):
        load_lora_adapter(empty)
    incomplete = tmp_path / "incomplete"  # a config without weights
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2).save_pretrained(incomplete)
    with pytest.raises(OSError, match=str(incomplete)):
        LLM(tokenizer=tok, pretrained=str(incomplete))


def test_planner_reads_pretrained_directories(shapes_root, weights, tmp_path):
    from visionllm.engine.estimate import estimate

    cfg = _cfg(shapes_root, weights, tmp_path)
    est = estimate(cfg)
    model = instantiate(cfg.model)
    assert est["params_total"] == sum(p.numel() for p in model.parameters())
    assert est["params_trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert est["sequence"]["counted"] == "counted with the model's tokenizer"


def test_adapter_from_a_gathered_state_dict_is_the_same(trained, weights, tmp_path):
    """FSDP checkpoints write the adapter from a full state dict gathered to rank 0 (the live
    model is sharded); the files are the same as from the live model."""
    from safetensors.torch import load_file

    model, _ = load_model(trained)
    live = save_lora_adapter(model, tmp_path / "live", weights["llama_dir"])
    full = {k.removeprefix("llm.model."): v for k, v in model.state_dict().items() if k.startswith("llm.model.")}
    gathered = save_lora_adapter(model, tmp_path / "gathered", weights["llama_dir"], state_dict=full)
    a, b = load_file(str(live / "adapter_model.safetensors")), load_file(str(gathered / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (live / "adapter_config.json").read_text() == (gathered / "adapter_config.json").read_text()
