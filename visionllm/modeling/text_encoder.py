"""Text encoder of the language-guided image tokenizer (METHOD.md §3): BERT through
``transformers``, trainable (a frozen BERT collapsed training in the paper's ablation).

Built from a local pretrained directory when given, else from a small random config.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import BertConfig, BertModel


class TextEncoder(nn.Module):
    def __init__(
        self,
        *,
        tokenizer,
        pretrained: str | None = None,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        max_length: int = 256,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        if pretrained:
            p = Path(pretrained)
            if not (p / "config.json").is_file():
                raise FileNotFoundError(f"BERT directory {p} has no config.json")
            config = BertConfig.from_pretrained(str(p), hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
            self.bert = BertModel.from_pretrained(str(p), config=config, add_pooling_layer=False)
        else:
            cfg = BertConfig(
                vocab_size=len(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                hidden_size=hidden_size,
                num_hidden_layers=num_layers,
                num_attention_heads=num_heads,
                intermediate_size=hidden_size * 4,
                max_position_embeddings=max_length,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
            )
            self.bert = BertModel(cfg, add_pooling_layer=False)
        self.max_length = self.bert.config.max_position_embeddings
        self.hidden_size = self.bert.config.hidden_size

    def forward(self, texts: list[str]):
        """B texts -> features (B, L, C) and padding mask (B, L), True where padded."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        device = self.bert.embeddings.word_embeddings.weight.device
        input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, attention_mask == 0
