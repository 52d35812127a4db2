"""The planner (visionllm/engine/estimate.py, tools/estimate.py): the paper's 7B preset on the
meta device, and the command on the demo config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import compose_cfg
from visionllm.engine import estimate as E

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    out = tmp_path_factory.mktemp("est")
    cfg = compose_cfg("train", ["experiment=coco_r50", f"output_dir={out}", f"data.root={out}/no_data"])
    m = E.measure(cfg)
    return cfg, m, E.estimate(cfg, measured=m)


def test_coco_r50_params(coco):
    _, _, est = coco
    n = est["params_total"]
    assert 6.3e9 < n < 7.5e9, n
    assert est["params_trainable"] < 0.1 * n  # LoRA + new rows + the image tokenizer
    assert sum(est["params"].values()) == n
    assert sum(est["params_trainable_by_component"].values()) == est["params_trainable"]
    p = est["params"]
    assert 6.4e9 < p["llm_base"] < 7e9
    assert est["params_trainable_by_component"]["llm_base"] == 0  # frozen base
    assert p["lora"] == 32 * 4 * 2 * 4096 * 64  # 32 layers, q k v o, A and B, rank 64
    assert 20e6 < p["backbone"] < 30e6  # ResNet-50 without its classifier
    assert p["new_token_rows"] % 4096 == 0 and p["new_token_rows"] > 0


def test_coco_r50_sequence(coco):
    _, _, est = coco
    q = est["sequence"]
    assert q["classes"] == 80 and "COCO" in q["class_names_from"]
    assert 500 < q["instruction_tokens"] < 1200  # 80 names in a LLaMA-like vocabulary
    # the generalist preset asks for polygons too: its longest format, 24 points, sets the length
    assert q["llm_tokens"] == q["instruction_tokens"] - 1 + 100 + 100 * (1 + 2 * 24)
    assert q["text_encoder_tokens"] == 512  # BERT's positions; the note says it truncates
    assert any("512" in n for n in est["notes"])


def test_coco_r50_memory(coco):
    cfg, m, est = coco
    s = E.settings(cfg)
    assert s == {"precision": "bf16", "strategy": "ddp", "world_size": 1, "checkpointing": True, "batch_size": 1}
    total = est["est_memory_gib_per_gpu"]
    assert 0 < total < 80 and est["fits_one_gpu"] and est["verdict"] == "fits"
    parts = est["memory_gib"]
    assert abs(sum(v for k, v in parts.items() if k != "total") - parts["total"]) < 0.01
    assert 12 < parts["weights_frozen"] < 14  # ~6.7B frozen in bf16
    mem = lambda **kw: E.memory(m, **dict(s, **kw))["total"]
    assert mem(checkpointing=True) < mem(checkpointing=False)
    assert mem(strategy="fsdp", world_size=8) < mem(strategy="ddp", world_size=8) < mem(strategy="ddp", world_size=1) + 2 * GIB
    assert mem(strategy="fsdp", world_size=8) < mem(strategy="fsdp", world_size=2)
    assert mem(precision="fp32") > mem(precision="bf16")
    assert est["scenarios_gib"]["bf16 ddp x1 checkpointing=off"] > est["scenarios_gib"]["bf16 ddp x1 checkpointing=on"]


def test_advice_when_it_does_not_fit(coco, monkeypatch):
    cfg, m, _ = coco
    monkeypatch.setattr(E, "GPU_GIB", 16.0)  # a 16 GB card: the frozen 7B base alone needs ~13 GiB
    s = dict(E.settings(cfg), checkpointing=False)
    verdict = E.advice(m, s)
    assert "trainer.strategy=fsdp" in verdict and "gradient_checkpointing=true" in verdict
    monkeypatch.setattr(E, "GPU_GIB", 1.0)
    assert "does not fit" in E.advice(m, s)


def test_llama_like_count():
    specials = {"<c0>", "<c1>", "<image>"}
    assert E.llama_like_count("<image> <c0><c1>", specials) == 4  # three added tokens + one space
    assert 6 <= E.llama_like_count("{'person': <c0>}", specials) <= 10
    assert E.llama_like_count("hippopotamus", set()) == 3  # long words split


def test_estimate_command_shapes_tiny(shapes_root, tmp_path):
    out = tmp_path / "est"
    cmd = [sys.executable, "tools/estimate.py", "experiment=shapes_tiny", f"output_dir={out}", f"data.root={shapes_root}",
           "trainer.strategy=fsdp", "trainer.world_size=2"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    est = json.loads((out / "estimate.json").read_text())
    assert est["settings"]["strategy"] == "fsdp" and est["settings"]["world_size"] == 2
    assert 1e6 < est["params_total"] < 5e7 and est["est_memory_gib_per_gpu"] > 0
    assert est["sequence"]["classes"] == 6  # the shapes' own categories, read from the data set
    assert "fsdp_gathered_layers" in est["memory_gib"]
    assert "TOTAL" in res.stdout and "verdict" in res.stdout and "lora" in res.stdout
