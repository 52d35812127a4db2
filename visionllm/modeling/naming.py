"""What the LLM's head says at the image tokens [ours]: token naming's loss (docs/design.md,
"Token naming") and the copy's tables (named_copy.py), as methods of :class:`VisionLLM`.

The mixin reads the model's ``llm``, ``token_names``, ``token_names_layer`` and
``named_copy``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def image_extent(pixel_mask: torch.Tensor) -> torch.Tensor:
    """(B, 2) the image's width and height as shares of the square canvas, from the batch's
    ``pixel_mask`` (B, S, S), True where the canvas is padding."""
    inside = ~pixel_mask
    return torch.stack([inside.any(1).float().mean(-1), inside.any(2).float().mean(-1)], -1)


def side_words(centers: torch.Tensor | None, extent: torch.Tensor) -> list[str] | None:
    """Per object, the halves of the image its centre lies in, as the built-in questions word
    them ("left top"): ``centers`` (n, 2) canvas-normalized, ``extent`` (2,) the image's share
    of the canvas."""
    if centers is None:
        return None
    half = extent.to(centers.device) / 2
    return [("left" if x < half[0] else "right") + " " + ("top" if y < half[1] else "bottom")
            for x, y in centers.tolist()]


class TokenNaming:
    @contextmanager
    def _layer_output(self):
        """Within: the output of the LLM layer the token-naming loss reads (its first call,
        in ``seen["out"]``); nothing is hooked where the loss is off or reads the input."""
        seen: dict = {}
        if self.token_names <= 0 or self.token_names_layer == 0:
            yield seen
            return
        layer = self.llm.decoder.layers[self.token_names_layer - 1]
        hook = layer.register_forward_hook(lambda _m, _args, out: seen.setdefault("out", out))
        try:
            yield seen
        finally:
            hook.remove()

    def _naming_loss(self, states, ids, names, matches, sides=None) -> torch.Tensor:
        """Summed cross-entropy of the LLM head's words at each matched image token's position
        against the words of its object's name, each word an equal share ("red circle": half
        "red", half "circle"). ``states`` (b, T, H) one layer's output over the rows' sequences
        (prefix first), ``ids`` (b, L) their prefix token ids, per row the objects' ``names``
        and the tokenizer's (tokens, objects) match, either None where there are none.
        ``sides``, per row the objects' side words ("left top") or None: said as well (each word
        an equal share with the name's, or together the share ``model.token_sides`` gives them),
        but not noted as name words, so a question's pointer never looks for them
        (docs/design.md, "Token sides")."""
        vocab = self.llm.vocab
        picked, wanted = [], []
        for row, (row_names, match) in enumerate(zip(names, matches)):
            if not row_names or match is None or len(match[0]) == 0:
                continue
            at = (ids[row] == vocab.image).nonzero()[:, 0]  # the M image-token positions, in order
            tokens, objects = match
            picked.append(states[row, at[tokens.to(at.device)]])
            row_sides = sides[row] if sides is not None and sides[row] is not None else None
            wanted += [(row_names[j], row_sides[j] if row_sides else "") for j in objects.tolist()]
        if not picked:
            return states.new_zeros(()).float()
        unique = sorted(set(wanted))
        enc = self.llm.tokenizer([" " + n for n, _ in unique], add_special_tokens=False)["input_ids"]
        if self.named_copy is not None:
            self.named_copy.note_names(w for word_ids in enc for w in word_ids)
        extra = [self.llm.tokenizer(" " + s, add_special_tokens=False)["input_ids"] if s else [] for _, s in unique]
        target = torch.zeros(len(unique), vocab.image, device=states.device)
        share = self.token_sides if not isinstance(self.token_sides, bool) else None
        for r, word_ids in enumerate(enc):
            if share is None or not extra[r]:  # every word an equal share
                weights = [(w, 1.0 / (len(word_ids) + len(extra[r]))) for w in word_ids + extra[r]]
            else:
                weights = [(w, (1.0 - share) / len(word_ids)) for w in word_ids]
                weights += [(w, share / len(extra[r])) for w in extra[r]]
            for w, weight in weights:
                target[r, w] += weight
        target = target[[unique.index(n) for n in wanted]]
        return -(target * self._head_words(torch.cat(picked)).log_softmax(-1)).sum()

    def _head_words(self, states: torch.Tensor) -> torch.Tensor:
        """(..., V) what the LLM's final norm and head say of ``states`` (..., H) taken at some
        layer, over the text words (the ids below the added tokens)."""
        return self.llm.logits(self.llm.decoder.norm(states),
                               torch.arange(self.llm.vocab.image, device=states.device))

    def _word_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` tokenized after a space, as names are."""
        return self.llm.tokenizer(" " + text, add_special_tokens=False)["input_ids"]

    def _copy_tables(self, states: torch.Tensor, ids_row: torch.Tensor, tokens: torch.Tensor,
                     objectness: torch.Tensor | None, questions: list[str],
                     where: torch.Tensor | None = None) -> dict:
        """{question: ((2, V) log c, (H,) read)} of the copy over one image's tokens: ``states``
        (T, H) the named layer's output over the sequence, ``ids_row`` its prefix token ids,
        ``tokens`` (M, H) the image tokens, ``objectness`` (M,) the tokenizer's logits, ``where``
        (M, 2) the tokens' locations."""
        at = (ids_row == self.llm.vocab.image).nonzero()[:, 0]
        named = self._head_words(states[at]).log_softmax(-1)  # (M, V)
        return {q: self.named_copy.lookup(named, self._word_ids(q), tokens, objectness, where)
                for q in dict.fromkeys(questions)}

    def _copy_logp(self, hidden: torch.Tensor, tables: list, trail=None) -> torch.Tensor:
        """(P, V_all) next-word log-probabilities at P answer positions, ``hidden`` (P, H), each
        with its question's copy table (log c, read[, what the pointer needs to follow]);
        ``trail`` (writing, with ``model.copy_stay``): each position is the next word of its own
        answer, and the pointer's path so far is carried there (``named_copy.Trail``)."""
        log_c = torch.stack([t[0] for t in tables])
        if self.named_copy.follow is not None:
            log_c = self.named_copy.move(hidden, log_c, [t[2] for t in tables], trail=trail)
        hidden = hidden + torch.stack([t[1] for t in tables]).to(hidden.dtype)
        return self.named_copy.mix(hidden, self.llm.logits(hidden), log_c)
