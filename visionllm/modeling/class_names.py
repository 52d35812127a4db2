"""A class name's words, as the class slots read them [ours; docs/design.md, "Class slots"]: the
mean (or pooled) input embedding of each name, and the words token naming says of it (for
``model.name_fit``), as methods of :class:`VisionLLM`.

The mixin reads the model's ``llm``, ``class_pointer`` (for the device), ``name_pool`` and
``named_copy``.
"""

from __future__ import annotations

import torch

from visionllm.modeling.name_pool import NamePool
from visionllm.modeling.readout import rms as _rms


def by_class(values: torch.Tensor, names: list[str], class_lists: list[list[str]], kmax: int) -> torch.Tensor:
    """(U, ...) one row per name of ``names`` -> (b, Kmax, ...) the rows of each list's classes,
    in order, zeros past its K."""
    row = {n: i for i, n in enumerate(names)}
    out = values.new_zeros(len(class_lists), kmax, *values.shape[1:])
    for b, names_b in enumerate(class_lists):
        out[b, : len(names_b)] = values[[row[n] for n in names_b]]
    return out


class ClassNames:
    def _name_embeddings(self, class_lists: list[list[str]], kmax: int, unit: bool = False) -> torch.Tensor:
        """(b, Kmax, H) mean LLM input embedding of each class name's tokens (zeros past K),
        weighted by ``name_pool`` where the model has one; ``unit``: the plain mean of the
        words each at unit RMS (what ``name_location`` reads), with no pool.

        Each name is tokenized after a space, so a word is the same token wherever it stands
        ("circle" alone and in "the red circle" alike)."""
        names = sorted({n for names in class_lists for n in names})
        mean = self._mean_embeddings(names, unit=True) if unit else self._mean_embeddings(names, pool=self.name_pool)
        return by_class(mean, names, class_lists, kmax)

    def _name_words(self, class_lists: list[list[str]], kmax: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each class name's words as token naming says them, for ``name_fit``: (b, Kmax, T) word
        ids (plurals as their singular) and (b, Kmax, T) shares, over the words the named copy
        knows as name words, by the name pool's weights where the model has one (else alike),
        summing to 1 over a name's named words (0 for a name with none, and past K)."""
        names = sorted({n for names in class_lists for n in names})
        ids, mask = self._name_ids(names)
        copy = self.named_copy
        words = copy.singular_of[ids.clamp(0, copy.num_words - 1)]
        named = mask * ((ids < copy.num_words) & copy.name_words[words]).float()
        share = named
        if self.name_pool is not None:
            with torch.no_grad():
                share = named * self.name_pool.weights(self.llm.embed(ids).float(), mask)
        share = share / share.sum(1, keepdim=True).clamp_min(1e-12)
        return by_class(words, names, class_lists, kmax), by_class(share, names, class_lists, kmax)

    def _name_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, T) token ids of each text tokenized after a space, right-padded, and (U, T) 1 on a
        token, 0 on padding (float), on the model's device."""
        enc = self.llm.tokenizer([" " + t for t in texts], add_special_tokens=False, padding=True, return_tensors="pt")
        device = self.class_pointer.weight.device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device).float()

    def _mean_embeddings(self, texts: list[str], pool: NamePool | None = None, unit: bool = False) -> torch.Tensor:
        """(U, H) mean LLM input embedding of each text's tokens, tokenized after a space (with
        ``pool``: their weighted mean, by its learned weights; ``unit``: each token's embedding at
        unit RMS before the mean)."""
        ids, mask = self._name_ids(texts)
        emb = self.llm.embed(ids).float()  # (U, T, H)
        if unit:
            emb = _rms(emb)
        if pool is not None:
            return pool(emb, mask)
        return (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
