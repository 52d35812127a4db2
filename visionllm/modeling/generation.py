"""The text path of ``VisionLLM`` (captions, answers): learning it (``_text_loss``, next-token
cross-entropy through the readout and the copy) and writing it token by token over the KV cache,
greedy or sampled, several samples side by side, optionally never repeating a run of n tokens.

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

    def _answer_ids(self, text: str) -> list[int]:
        """Token ids of an answer, ending with the end token (which is learned too)."""
        tok = self.llm.tokenizer
        return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def _text_loss(self, prefix, valid, rows: list[int], answers: list[list[int]], ids=None, context=None, *,
                   v=None, instructions=None, turns=None, objectness=None, anchors=None,
                   weights: list[float] | None = None) -> torch.Tensor:
        """Summed next-token cross-entropy on each answer after the <bos> query, and on the
        prefix tokens at ``context`` positions (per row: earlier answers of a conversation,
        ``ids`` their token ids); the caller divides by the answer tokens of all processes (as
        the box losses divide by objects). ``v`` (the image tokens and their pixels, or None),
        ``instructions`` and ``turns`` (per row: (question, positions) of each earlier answer)
        feed the text readout, where the model has one; ``objectness`` (B, M, the tokenizer's
        logits) and ``anchors`` (B, M, 2), or None, the copy too. ``weights`` (per row, default 1)
        scale each answer's tokens: a self-critical sample's advantage (engine/scst.py)."""
        vocab = self.llm.vocab
        seqs, label_rows = [], []
        for b, ans in zip(rows, answers):
            n = int(valid[b].sum())
            emb = torch.cat([prefix[b, :n], self.llm.embed(torch.tensor([vocab.bos] + ans[:-1], device=prefix.device))])
            seqs.append(emb)
            label_rows.append((n, ans))  # the <bos> query at position n predicts ans[0]
        L = max(s.shape[0] for s in seqs)
        H = prefix.shape[-1]
        embeds = prefix.new_zeros(len(seqs), L, H)
        mask = torch.zeros(len(seqs), L, dtype=torch.long, device=prefix.device)
        for i, s in enumerate(seqs):
            embeds[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = 1
        with self._layer_output() as seen:
            hidden = self.llm.decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        if self.text_readout is not None:
            tokens, pixels = v
            question = self._questions([instructions[b] for b in rows])[:, None].expand(-1, L, -1).clone()
            earlier = [(i, q, pos) for i, row in enumerate(turns or []) for q, pos in row if pos]
            if earlier:
                asked = self._mean_embeddings([q for _, q, _ in earlier])
                for (i, _, pos), e in zip(earlier, asked):
                    question[i, torch.tensor(pos, device=prefix.device) - 1] = e  # p - 1 predicts p
            hidden = self._read(hidden, question, (tokens[rows], None if pixels is None else pixels[rows]))
        picked = [hidden[i, n : n + len(ans)] for i, (n, ans) in enumerate(label_rows)]
        labels = [torch.tensor(ans, device=prefix.device) for _, ans in label_rows]
        # the question each picked position answers (for the copy): the row's last line, or
        # for an earlier answer of a conversation, its own
        asks = [(i, [question_line(instructions[b]) if instructions else ""] * len(ans))
                for i, (b, (_, ans)) in enumerate(zip(rows, label_rows))]
        for i, (b, pos) in enumerate(zip(rows, context or [])):
            if pos:
                at = torch.tensor(pos, device=prefix.device)
                picked.append(hidden[i, at - 1])  # position p - 1 predicts the token at p
                labels.append(ids[b, at])
                own = {p: q for q, ps in (turns[i] if turns else []) for p in ps}
                asks.append((i, [own.get(p, "") for p in pos]))
        scale = torch.cat([torch.full((len(ans),), float(w), device=prefix.device)
                           for (_, ans), w in zip(label_rows, weights or [1.0] * len(label_rows))]
                          + [torch.ones(len(pos), device=prefix.device) for pos in (context or []) if pos])
        picked, labels = torch.cat(picked), torch.cat(labels)
        if self.named_copy is None:
            nll = torch.nn.functional.cross_entropy(self.llm.logits(picked), labels, reduction="none")
            return (nll * scale).sum()
        states = seen.get("out", embeds)  # layer 0: the LLM's input
        tables = [self._copy_tables(states[i], ids[b], v[0][b], None if objectness is None else objectness[b],
                                    [q for j, qs in asks if j == i for q in qs],
                                    None if anchors is None else anchors[b])
                  for i, b in enumerate(rows)]
        per_position = [tables[i][q] for i, qs in asks for q in qs]
        logp = self._copy_logp(picked, per_position)
        loss = (torch.nn.functional.nll_loss(logp, labels, reduction="none") * scale).sum()
        if self.count_loss > 0:
            # at each answer word that is a number (or, with count_exist, "no" or "yes"), log P(n =
            # it) (P(n = 0) or P(n > 0)) under the count alone
            at = torch.isin(labels, self.named_copy.count_words).nonzero()[:, 0].tolist()
            if at:
                said = torch.stack([per_position[p][0][2, labels[p]] for p in at])
                loss = loss - self.count_loss * (said * scale[at]).sum()
        return loss
