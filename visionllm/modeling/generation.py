"""Writing text token by token over the KV cache (captions, answers), for ``VisionLLM``: greedy
or sampled, several samples side by side, optionally never repeating a run of n tokens.

A mixin: it uses the model's ``llm``, ``text_readout``, ``named_copy`` and the copy tables of
``TokenNaming`` (naming.py).
"""

from __future__ import annotations

import torch

from visionllm.modeling.named_copy import Trail
from visionllm.tasks.instructions import question_line


def repeat_closers(written: list[int], n: int) -> list[int]:
    """The tokens that, written next, would repeat a run of ``n`` tokens already in ``written``."""
    if n <= 0 or len(written) < n:
        return []
    tail = written[len(written) - n + 1 :]
    return sorted({written[i + n - 1] for i in range(len(written) - n + 1) if written[i : i + n - 1] == tail})


class TextWriting:
    def generate_text(self, prefix: torch.Tensor, max_new_tokens: int, *, image_tokens: tuple | None = None,
                      instruction: str = "", ids: torch.Tensor | None = None,
                      objectness: torch.Tensor | None = None, anchors: torch.Tensor | None = None,
                      temperature: float = 0.0, generator: torch.Generator | None = None,
                      no_repeat_ngram: int = 0) -> str:
        """Token-by-token text with the KV cache, for captions and answers: ``generate`` itself,
        or with the text readout (``image_tokens`` = (v (1, M, H), pixels (1, M, C)) then
        required) or the copy (``ids``, the prefix's token ids, then required; ``objectness``
        (M,) the tokenizer's logits, ``anchors`` (M, 2) the tokens' locations) a loop of our own
        over the same cache. Greedy, or with ``temperature`` > 0 each word is drawn from the
        distribution at that temperature (from ``generator`` where given). ``no_repeat_ngram`` n >
        0: a token that would repeat a run of n tokens already written is never chosen."""
        if temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, not {temperature}")
        tok = self.llm.tokenizer
        if self.text_readout is None and self.named_copy is None and temperature == 0:
            bos = self.llm.embed(torch.tensor([[self.llm.vocab.bos]], device=prefix.device))
            embeds = torch.cat([prefix, bos], 1)
            out_ids = self.llm.model.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=prefix.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                no_repeat_ngram_size=no_repeat_ngram,
            )
            return tok.decode(out_ids[0], skip_special_tokens=True).strip()
        return self.generate_texts(prefix, max_new_tokens, image_tokens=image_tokens, instruction=instruction, ids=ids,
                                   objectness=objectness, anchors=anchors, temperature=temperature,
                                   generator=generator, no_repeat_ngram=no_repeat_ngram)[0]

    def generate_texts(self, prefix: torch.Tensor, max_new_tokens: int, *, samples: int = 1,
                       image_tokens: tuple | None = None, instruction: str = "", ids: torch.Tensor | None = None,
                       objectness: torch.Tensor | None = None, anchors: torch.Tensor | None = None,
                       temperature: float = 0.0, generator: torch.Generator | None = None,
                       with_ids: bool = False, no_repeat_ngram: int = 0) -> list:
        """``samples`` texts after one prefix (1, L, H), written side by side over one KV cache
        (the prefix is read once, then its cache repeated): our own loop, as ``generate_text``
        describes, greedy or at ``temperature``; several are only useful sampled. With
        ``with_ids``, (text, the token ids it was written as) for each."""
        if temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, not {temperature}")
        if self.text_readout is not None and image_tokens is None:
            raise ValueError("a model with a text readout needs the image tokens to generate text")
        if self.named_copy is not None and (ids is None or image_tokens is None):
            raise ValueError("a model with the named copy needs the prefix's token ids and the image tokens "
                             "to generate text")
        tok, R = self.llm.tokenizer, samples
        bos = self.llm.embed(torch.tensor([[self.llm.vocab.bos]], device=prefix.device))
        embeds = torch.cat([prefix, bos], 1)
        question = self._questions([instruction]).expand(R, -1) if self.text_readout is not None else None
        if image_tokens is not None:
            image_tokens = tuple(None if t is None else t.expand(R, *t.shape[1:]) for t in image_tokens)
        with self._layer_output() as seen:
            out = self.llm.decoder(inputs_embeds=embeds, use_cache=True)
        copy = None
        if self.named_copy is not None:
            asked = question_line(instruction)
            copy = self._copy_tables(seen.get("out", embeds)[0], ids, image_tokens[0][0], objectness, [asked],
                                     anchors)[asked]
        # the copy's pointer path along each answer (model.copy_stay), from its first word
        trail = Trail() if copy is not None and self.named_copy.stay is not None else None
        cache, last = out.past_key_values, out.last_hidden_state[:, -1:]
        if R > 1:
            cache.batch_repeat_interleave(R)
            last = last.expand(R, -1, -1)
        new = torch.empty(R, 0, dtype=torch.long, device=prefix.device)
        done = torch.zeros(R, dtype=torch.bool, device=prefix.device)
        for _ in range(max_new_tokens):
            hidden = self._read(last, question, image_tokens)[:, -1]  # (R, H)
            logits = self.llm.logits(hidden) if copy is None else self._copy_logp(hidden, [copy] * R, trail)
            if no_repeat_ngram > 0 and new.shape[1] >= no_repeat_ngram:
                logits = logits.clone()
                for r, row in enumerate(new.tolist()):
                    logits[r, repeat_closers(row, no_repeat_ngram)] = float("-inf")
            if temperature > 0:
                probs = (logits.float() / temperature).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, tok.eos_token_id), nxt)
            done = done | (nxt == tok.eos_token_id)
            if bool(done.all()):
                break
            new = torch.cat([new, nxt[:, None]], 1)
            out = self.llm.decoder(inputs_embeds=self.llm.embed(nxt[:, None]), past_key_values=cache, use_cache=True)
            cache, last = out.past_key_values, out.last_hidden_state
        texts = []
        for row in new.tolist():
            row = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
            text = tok.decode(row, skip_special_tokens=True).strip()
            texts.append((text, row) if with_ids else text)
        return texts
