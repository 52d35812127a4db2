"""Copy from named tokens [ours, docs/design.md "Copy from named tokens"]: a text answer may
take its word from the image token that the question speaks of.

With token naming (``model.token_names``), the LLM's own head, read at one layer over an image
token, names the object the token stands for: at a red circle's token it says "red" and
"circle". A question names its object too ("what colour is the circle?"). So how well token i
fits a question needs no learning at all: the log-probability that the head gives, at the
token, to the question's words. The copy turns that into a distribution over the words of the
image's objects and mixes it into the answer's next-word distribution, as a pointer-generator
network does (See et al. 2017, "Get To The Point"):

    m_i = sum_w u_w log p_i(w) / |Q| + k log sigmoid(o_i)     alpha = softmax_i(tau m_i)
    c(y) = sum_i alpha_i p_i(y)                    g_t = sigmoid(w . rms(h_t) + b)
    p_t(y) = (1 - g_t) p_LLM,t(y) + g_t c(y)

``p_i`` is the head's word distribution at token i (over the text vocabulary), ``Q`` the
question's words that token naming has taught the head to say (its name words: "circle",
"red"; not "what" or "the", whose log-probabilities at the tokens are noise that swamps the
fit: 0.21 of run 11's colour questions pointed at the right object with every word counted,
0.83 with the name words only), ``u`` a learned weight per word, ``o_i`` the image
tokenizer's objectness of token i and ``k`` its learned weight (0.88 with it), ``tau`` a
learned sharpness, ``g_t`` a gate from the answer position's own state (so the model can use
the copy for "what colour" and not for "how many").

A word has two forms in a BPE vocabulary: " red" inside a sentence, as names and questions
tokenize it, and "red" at the start of an answer. The copy holds both, c over the in-sentence
forms and c' the same mass moved to each word's bare form (``bare_of``), mixed by a second
gate from the position's state (f_t, starting at 1/2): p_t(y) = (1 - g_t) p_LLM,t(y) +
g_t (f_t c(y) + (1 - f_t) c'(y)). (Without it the first pilot copied " red" where the answer
was "red", and learnt to keep the gate shut.)

The same pointer also reads what a word cannot carry: where the token is ("is the circle on
the left or the right?") and how well, and how many, tokens fit the question ("is there a
star?", "how many stars?"). Before the head, each answer position gets

    h'_t = h_t + W_v sum_i alpha_i rms(v_i) + W_s [max_i m_i, logsumexp_i m_i]

with v_i the LLM's input token (its content and its location embedding) and m_i the
unsharpened fit. ``W_v`` and ``W_s`` start at zero and the gate nearly closed (b = -2, w = 0):
a model with the copy starts as one without it, up to 12 % of the mass. (At b = -4, 1.8 %, a
500-step pilot from run 11's weights left the gate shut: Adam moves a bias by about the
learning rate a step.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from visionllm.modeling.readout import rms


class NamedCopy(nn.Module):
    def __init__(self, hidden_size: int, bare_of: torch.Tensor, gate_bias: float = -2.0):
        """``bare_of`` (V,): for each text word id, the id of the same word without its leading
        space where the vocabulary has one (``bare_forms``), else the id itself."""
        super().__init__()
        self.num_words = int(bare_of.numel())
        self.register_buffer("bare_of", bare_of.long().clone(), persistent=False)  # from the tokenizer
        self.form = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.form.weight)
        nn.init.zeros_(self.form.bias)
        # the words token naming has asked the head to say at a token (filled as it trains)
        self.register_buffer("name_words", torch.zeros(self.num_words, dtype=torch.bool))
        self.word_gain = nn.Parameter(torch.ones(self.num_words))
        self.sharpness = nn.Parameter(torch.tensor(1.0))
        self.objectness_weight = nn.Parameter(torch.tensor(1.0))
        self.gate = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, gate_bias)
        self.read_value = nn.Linear(hidden_size, hidden_size, bias=False)
        self.read_score = nn.Linear(2, hidden_size, bias=False)
        nn.init.zeros_(self.read_value.weight)
        nn.init.zeros_(self.read_score.weight)

    @torch.no_grad()
    def note_names(self, word_ids) -> None:
        """Mark ``word_ids`` as name words (token naming trains the head to say them)."""
        ids = torch.as_tensor(list(word_ids), dtype=torch.long, device=self.name_words.device)
        self.name_words[ids[(ids >= 0) & (ids < self.num_words)]] = True

    def lookup(self, named_logp: torch.Tensor, question_ids: list[int], tokens: torch.Tensor,
               objectness: torch.Tensor | None = None):
        """For one question (its word token ids) over one image's M tokens: ``(log c (2, V),
        read (H,))``, the copy's word distribution (in-sentence forms, bare forms) and what is
        added to each answer state before the head. ``named_logp`` (M, V) the head's log-probabilities at each token, ``tokens`` (M, H)
        the LLM's input tokens, ``objectness`` (M,) the tokenizer's logits, or None."""
        if named_logp.shape[-1] != self.num_words:
            raise ValueError(f"named copy: {named_logp.shape[-1]} words at the tokens, the copy was built for "
                             f"{self.num_words}")
        q = [w for w in question_ids if 0 <= w < self.num_words and self.name_words[w]]
        if q:
            at = torch.tensor(q, device=named_logp.device)
            fit = (named_logp[:, at] * self.word_gain[at]).sum(-1) / len(q)
        else:  # a question that names nothing ("how many shapes?"): every token alike
            fit = named_logp.new_zeros(named_logp.shape[0])
        if objectness is not None:
            fit = fit + self.objectness_weight * nn.functional.logsigmoid(objectness.float())
        log_alpha = (fit * self.sharpness).log_softmax(0)  # (M,)
        log_c = torch.logsumexp(log_alpha[:, None] + named_logp, 0)
        bare = log_c.new_zeros(self.num_words).index_add(0, self.bare_of, log_c.exp())
        log_c = torch.stack([log_c, bare.clamp_min(1e-30).log()])
        read = self.read_value(log_alpha.exp() @ rms(tokens.float()))
        read = read + self.read_score(torch.stack([fit.max(), torch.logsumexp(fit, 0)]))
        return log_c, read

    def mix(self, hidden: torch.Tensor, logits: torch.Tensor, copy_logp: torch.Tensor) -> torch.Tensor:
        """(P, V_all) log-probabilities of the mixture at P answer positions: ``hidden`` (P, H)
        their states, ``logits`` (P, V_all) the LLM's, ``copy_logp`` (P, 2, V) each position's
        copy over the text words (the first V ids; the added tokens get none of it), in-sentence
        and bare forms."""
        h = rms(hidden.float())
        g = self.gate(h).squeeze(-1)  # (P,) gate logit
        f = self.form(h)  # (P, 1) in-sentence form against bare form
        llm = logits.float().log_softmax(-1) + nn.functional.logsigmoid(-g)[:, None]
        copy_logp = torch.logaddexp(copy_logp[:, 0] + nn.functional.logsigmoid(f),
                                    copy_logp[:, 1] + nn.functional.logsigmoid(-f))
        extra = logits.shape[-1] - copy_logp.shape[-1]
        copy = copy_logp + nn.functional.logsigmoid(g)[:, None]
        if extra:
            copy = torch.cat([copy, copy.new_full((copy.shape[0], extra), -math.inf)], -1)
        return torch.logaddexp(llm, copy)


def bare_forms(tokenizer, num_words: int) -> torch.Tensor:
    """(num_words,) for each word id below ``num_words``, the id of the same word without its
    leading space (" red" -> "red") where that is one token below ``num_words``, else itself."""
    ids = torch.arange(num_words)
    texts = [tokenizer.decode([i]) for i in range(num_words)]
    spaced = [i for i, t in enumerate(texts) if t.startswith(" ") and t.strip()]
    if spaced:
        enc = tokenizer([texts[i].strip() for i in spaced], add_special_tokens=False)["input_ids"]
        for i, e in zip(spaced, enc):
            if len(e) == 1 and 0 <= e[0] < num_words:
                ids[i] = e[0]
    return ids
