"""Helpers shared by the model tests: compose the real Hydra config with tiny sizes."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

CONF = str(Path(__file__).resolve().parents[1] / "conf")

# The smallest model that still has every part: 1+2 deformable layers, 1 LLM layer.
TINY = [
    "model.backbone.d_model=32",
    "model.image_tokenizer.num_queries=8",
    "model.image_tokenizer.enc_layers=1",
    "model.image_tokenizer.dec_layers=2",
    "model.image_tokenizer.d_ffn=64",
    "model.text_encoder.hidden_size=32",
    "model.text_encoder.num_layers=1",
    "model.llm.hidden_size=64",
    "model.llm.num_layers=1",
    "model.llm.intermediate_size=128",
    "model.llm.lora_rank=4",
    "data.image_size=64",
    "tokenizer_vocab_size=400",
]


def compose_cfg(config_name: str = "train", overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [])


def tiny_train_cfg(data_root: Path, out: Path, extra: list[str] | None = None):
    return compose_cfg(
        "train",
        ["experiment=shapes_tiny", f"data.root={data_root}", f"output_dir={out}", "trainer.batch_size=2",
         "trainer.num_workers=0", "trainer.log_every=1", "trainer.warmup_steps=2", "trainer.eval_max_images=4",
         "trainer.eval_batch_size=4"] + TINY + (extra or []),
    )


def tiny_model_and_sets(shapes_root: Path, tmp_path: Path, extra=(), task: str = "all"):
    """A tiny random model built from the real config, and the training sets it is fed from
    (the text tokenizer trained on their corpus first, as tools/train.py does)."""
    import torch
    from hydra.utils import instantiate

    from visionllm.engine import tasks
    from visionllm.engine.train import absolutize, prepare_tokenizer, tokenizer_corpus

    cfg = tiny_train_cfg(shapes_root, tmp_path, [f"task={task}", *extra])
    absolutize(cfg)
    ds, vocabulary = tasks.training_set(cfg)
    prepare_tokenizer(cfg, tokenizer_corpus(ds, vocabulary))
    torch.manual_seed(0)
    return instantiate(cfg.model), ds


def text_with_and_without(model, part: str, batch, max_new_tokens: int = 5):
    """What ``model`` writes for ``batch`` and its text loss, with its sub-module ``part`` as it
    is and with it removed: ``((texts, loss), (texts, loss))``."""
    import torch

    def run():
        return [o["text"] for o in model.predict(batch, max_new_tokens=max_new_tokens)], model(batch)["loss_text"]

    kept = getattr(model, part)
    with torch.no_grad():
        with_part = run()
        setattr(model, part, None)
        try:
            without = run()
        finally:
            setattr(model, part, kept)
    return with_part, without


def answers_without(model, part: str, batch) -> tuple[list[dict], list[dict]]:
    """``model``'s structured answers to ``batch`` in eval mode, with its sub-module ``part`` as
    it is and with it removed (put back after): ``(with_part, without)``."""
    import torch

    model.eval()
    kept = getattr(model, part)
    with torch.no_grad():
        with_part = model.predict(batch)
        setattr(model, part, None)
        try:
            without = model.predict(batch)
        finally:
            setattr(model, part, kept)
    return with_part, without
