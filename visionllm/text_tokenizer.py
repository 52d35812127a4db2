"""A text tokenizer without a hub: trained with ``tokenizers``, saved as a Hugging Face
tokenizer directory and loaded back with ``AutoTokenizer.from_pretrained``, the same path a
real LLaMA or BERT tokenizer directory takes.

It serves the tiny random models (tests, CPU demo). With real weights, the model's own
tokenizer directory is used instead and the VisionLLM tokens are added on top of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_text_tokenizer(texts: Iterable[str], out_dir: str | Path, *, vocab_size: int = 2000) -> Path:
    """Train a byte-level BPE tokenizer on ``texts`` and save it as an HF tokenizer directory."""
    tok = Tokenizer(models.BPE(unk_token=SPECIALS["unk_token"]))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def load_tokenizer(path: str | Path):
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt")):
        raise FileNotFoundError(
            f"{path} holds no tokenizer (expected tokenizer.json, tokenizer_config.json, tokenizer.model or vocab.txt)"
        )
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:  # LLaMA tokenizers ship without one
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok
