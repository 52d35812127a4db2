"""Copy from named tokens [ours, docs/design.md "Copy from named tokens"]: a text answer may
take its word from the image token that the question speaks of.

With token naming (``model.token_names``), the LLM's own head, read at one layer over an image
token, names the object the token stands for: at a red circle's token it says "red" and
"circle". A question names its object too ("what colour is the circle?"). So how well token i
fits a question needs no learning at all: the log-probability that the head gives, at the
token, to the question's words. The copy turns that into a distribution c over the words of
the image's objects and multiplies the answer's next-word distribution by it, to a power
learned from the position's state (a product of experts: the LLM knows which kind of word the
answer is, the copy which one of that kind is in the image):

    m_i = sum_w u_w log p_i(w) / |Q| + k log sigmoid(o_i)     alpha = softmax_i(tau m_i)
    c(y) = sum_i alpha_i p_i(y)                   beta_t = w . rms(h_t) + b
    p_t(y) ~ p_LLM,t(y) (c(y) + eps)^beta_t

``p_i`` is the head's word distribution at token i (over the text vocabulary), ``Q`` the
question's words that token naming has taught the head to say (its name words: "circle",
"red"; not "what" or "the", whose log-probabilities at the tokens are noise that swamps the
fit: 0.21 of run 11's colour questions pointed at the right object with every word counted,
0.83 with the name words only), ``u`` a learned weight per word, ``o_i`` the image
tokenizer's objectness of token i and ``k`` its learned weight (0.88 with it), ``tau`` a
learned sharpness, ``beta_t`` the copy's strength at the position (so the model can use it for
"what colour" and not for "how many", nor for the end token). A pointer-generator mixture,
(1 - g) p_LLM + g c (See et al. 2017), was the first form: its copy has to be right about the
kind of word as well, it holds the colour and the shape at once, and in 500 steps of a pilot
its gate opened to 0.08 only.

A word has two forms in a BPE vocabulary: " red" inside a sentence, as names and questions
tokenize it, and "red" at the start of an answer. The copy holds both, c over the in-sentence
forms and c' the same mass moved to each word's bare form (``bare_of``), mixed by a second
gate from the position's state (f_t, starting at 1/2): f_t c + (1 - f_t) c'.

The same pointer also reads what a word cannot carry: where the token is ("is the circle on
the left or the right?") and how well, and how many, tokens fit the question ("is there a
star?", "how many stars?"). Before the head, each answer position gets

    h'_t = h_t + W_v sum_i alpha_i rms(v_i) + W_s [max_i m_i, logsumexp_i m_i]

with v_i the LLM's input token (its content and its location embedding) and m_i the
unsharpened fit; with ``where_feats`` (``model.copy_where``) also W_l sum_i alpha_i sine(l_i),
the pointed-at location itself, in the DETR-style sine features the image tokens' location
embedding starts from (the lowest, sin 2 pi x, is positive left of centre, negative right). ``W_v``, ``W_s``, ``w`` and ``b`` start at zero: a model with the copy starts
exactly as one without it.

With ``count_ids`` (``model.copy_count``) the copy also counts: token i is one of the objects
a question asks about with probability q_i = sigmoid(a s_i + k o_i + b), s_i the mean over
the question's name words of log p_i(w) - max_y log p_i(y) (0 where the token says them,
whatever share of its name they are); the number counted is a Poisson binomial over the
tokens (``count_distribution``), and p_t(y) is also multiplied by P(n = y)^gamma_t at the
number words, gamma_t from the state and starting at 0 (docs/design.md, "Counting from the
tokens").
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from visionllm.modeling.deformable import sine_embed
from visionllm.modeling.readout import rms


class NamedCopy(nn.Module):
    eps = 1e-6  # the floor of c: a word the copy does not offer is not ruled out

    def __init__(self, hidden_size: int, bare_of: torch.Tensor, where_feats: int = 0,
                 count_ids: torch.Tensor | None = None, singular_of: torch.Tensor | None = None,
                 follow: bool = False, exist_ids: torch.Tensor | None = None, stay: bool = False):
        """``bare_of`` (V,): for each text word id, the id of the same word without its leading
        space where the vocabulary has one (``bare_forms``), else the id itself; ``where_feats``
        > 0: the read also takes the pointed-at location, W_l sum_i alpha_i sine(l_i), with that
        many sine features per axis (0: it does not); ``count_ids`` (K + 1, F): the word ids that
        say the numbers 0 to K, in each of F forms (-1: none; ``count_forms``), for the count
        (None: no count); ``singular_of`` (V,): each word's singular where it is a plural of one
        token (``singular_forms``; " stars" -> " star"), so "how many stars?" names the stars
        (None: every word as it is); ``follow``: the pointer that picks the copied words moves
        along the answer, by a query from each position's state (``move``; zero at the start);
        ``exist_ids`` (2, F): the word ids of "no" and "yes" in F forms (-1: none;
        ``exist_forms``), which the count then also says, at P(n = 0) and P(n > 0) (None: it
        does not; needs ``count_ids``); ``stay``: the moving pointer also remembers where it was
        (``move``: it may stay on the object it pointed at a word before, or leave the objects
        it has covered; needs ``follow``)."""
        super().__init__()
        self.num_words = int(bare_of.numel())
        self.register_buffer("bare_of", bare_of.long().clone(), persistent=False)  # from the tokenizer
        singular_of = torch.arange(self.num_words) if singular_of is None else singular_of.long().clone()
        self.register_buffer("singular_of", singular_of, persistent=False)
        self.form = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.form.weight)
        nn.init.zeros_(self.form.bias)
        # the words token naming has asked the head to say at a token (filled as it trains)
        self.register_buffer("name_words", torch.zeros(self.num_words, dtype=torch.bool))
        self.word_gain = nn.Parameter(torch.ones(self.num_words))
        self.sharpness = nn.Parameter(torch.tensor(1.0))
        self.objectness_weight = nn.Parameter(torch.tensor(1.0))
        self.strength = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.strength.weight)
        nn.init.zeros_(self.strength.bias)
        self.read_value = nn.Linear(hidden_size, hidden_size, bias=False)
        self.read_score = nn.Linear(2, hidden_size, bias=False)
        nn.init.zeros_(self.read_value.weight)
        nn.init.zeros_(self.read_score.weight)
        self.where_feats = int(where_feats)
        self.read_where = nn.Linear(2 * self.where_feats, hidden_size, bias=False) if self.where_feats else None
        if self.read_where is not None:
            nn.init.zeros_(self.read_where.weight)
        self.follow = nn.Linear(hidden_size, hidden_size, bias=False) if follow else None
        if self.follow is not None:
            nn.init.zeros_(self.follow.weight)
        if stay and not follow:
            raise ValueError("named copy: stay remembers where the moving pointer was; it needs follow")
        # (g_t, w_t) from each position's state: how much it stays, how much it leaves the covered
        self.stay = nn.Linear(hidden_size, 2) if stay else None
        if self.stay is not None:
            nn.init.zeros_(self.stay.weight)
            nn.init.zeros_(self.stay.bias)
        if count_ids is None:
            self.count_ids = None
        else:
            count_ids = count_ids.long().clone()
            count_ids[count_ids >= self.num_words] = -1  # an added token is never a number word
            self.register_buffer("count_ids", count_ids, persistent=False)
            # q_i = sigmoid(a s_i + k' o_i + b): token i is one of the objects asked about
            self.count_fit = nn.Parameter(torch.tensor(1.0))
            self.count_objectness = nn.Parameter(torch.tensor(1.0))
            self.count_bias = nn.Parameter(torch.tensor(0.0))
            self.count_strength = nn.Linear(hidden_size, 1)
            nn.init.zeros_(self.count_strength.weight)
            nn.init.zeros_(self.count_strength.bias)
        self.register_buffer("exist_ids", None, persistent=False)
        self.set_exist_ids(exist_ids)

    def set_exist_ids(self, exist_ids: torch.Tensor | None) -> None:
        """Existence answers from the count from now on (``exist_ids``, as in ``__init__``), or
        not (None). The count has no weights of its own for them, so this can change at any time."""
        if exist_ids is None:
            self.exist_ids = None
            return
        if self.count_ids is None:
            raise ValueError("named copy: existence answers come from the count, and there is none (count_ids)")
        exist_ids = exist_ids.long().clone().to(self.count_ids.device)
        exist_ids[exist_ids >= self.num_words] = -1
        if exist_ids.shape != (2, self.count_ids.shape[1]) or not (exist_ids >= 0).any(-1).all():
            raise ValueError(f'named copy: exist_ids must say "no" and "yes" in the {self.count_ids.shape[1]} '
                             f"forms of count_ids, each in one at least; got {exist_ids.tolist()}")
        self.exist_ids = exist_ids

    @property
    def count_words(self) -> torch.Tensor:
        """The word ids the count's row speaks: the numbers, and "no" and "yes" with ``exist_ids``."""
        ids = self.count_ids.flatten()
        if self.exist_ids is not None:
            ids = torch.cat([ids, self.exist_ids.flatten()])
        return ids[ids >= 0]

    @torch.no_grad()
    def note_names(self, word_ids) -> None:
        """Mark ``word_ids`` as name words (token naming trains the head to say them)."""
        ids = torch.as_tensor(list(word_ids), dtype=torch.long, device=self.name_words.device)
        self.name_words[ids[(ids >= 0) & (ids < self.num_words)]] = True

    def lookup(self, named_logp: torch.Tensor, question_ids: list[int], tokens: torch.Tensor,
               objectness: torch.Tensor | None = None, where: torch.Tensor | None = None):
        """For one question (its word token ids) over one image's M tokens: ``(log c (R, V),
        read (H,))``, the copy's word distribution (in-sentence forms, bare forms; with the count,
        a third row: log P(n = k) at the words of each number k, 0 elsewhere) and what is added
        to each answer state before the head; with ``follow``, a third item, what ``move`` needs
        to point again at each position (the sharpened fit (M,), ``named_logp``, the tokens at
        unit RMS). ``named_logp`` (M, V) the head's
        log-probabilities at each token, ``tokens`` (M, H) the LLM's input tokens,
        ``objectness`` (M,) the tokenizer's logits, or None, ``where`` (M, 2) the tokens'
        locations l_i on the canvas (0 to 1), or None."""
        if named_logp.shape[-1] != self.num_words:
            raise ValueError(f"named copy: {named_logp.shape[-1]} words at the tokens, the copy was built for "
                             f"{self.num_words}")
        at = torch.tensor([w for w in question_ids if 0 <= w < self.num_words], dtype=torch.long,
                          device=named_logp.device)
        at = self.singular_of[at]
        at = at[self.name_words[at]]
        if len(at):
            fit = (named_logp[:, at] * self.word_gain[at]).sum(-1) / len(at)
        else:  # a question that names nothing ("how many shapes?"): every token alike
            fit = named_logp.new_zeros(named_logp.shape[0])
        # for the count, how fully each token says the question's name words: 0 where they are
        # among its most likely words, whatever share of its name they are
        said = (named_logp[:, at] - named_logp.max(-1, keepdim=True).values).mean(-1) if len(at) else fit
        if objectness is not None:
            fit = fit + self.objectness_weight * nn.functional.logsigmoid(objectness.float())
        log_alpha = (fit * self.sharpness).log_softmax(0)  # (M,)
        log_c = torch.logsumexp(log_alpha[:, None] + named_logp, 0)
        bare = log_c.new_zeros(self.num_words).index_add(0, self.bare_of, log_c.exp())
        rows = [log_c, bare.clamp_min(1e-30).log()]
        if self.count_ids is not None:
            logit_q = self.count_fit * said + self.count_bias
            if objectness is not None:
                logit_q = logit_q + self.count_objectness * objectness.float()
            log_n, words = count_distribution(logit_q, self.count_ids.shape[0]), self.count_ids
            if self.exist_ids is not None:  # "no" at P(n = 0), "yes" at P(n > 0)
                log_n = torch.cat([log_n, torch.stack([log_n[0], log_some(logit_q)])])
                words = torch.cat([words, self.exist_ids])
            ids = words.flatten()
            real = ids >= 0
            rows.append(log_c.new_zeros(self.num_words).index_put(
                (ids[real],), log_n.repeat_interleave(words.shape[1])[real]))
        log_c = torch.stack(rows)
        read = self.read_value(log_alpha.exp() @ rms(tokens.float()))
        read = read + self.read_score(torch.stack([fit.max(), torch.logsumexp(fit, 0)]))
        if self.read_where is not None and where is not None:
            read = read + self.read_where(log_alpha.exp() @ sine_embed(where.float(), self.where_feats))
        if self.follow is not None:
            return log_c, read, (fit * self.sharpness, named_logp, rms(tokens.float()))
        return log_c, read

    def move(self, hidden: torch.Tensor, log_c: torch.Tensor, again: list, trail: Trail | None = None) -> torch.Tensor:
        """``log_c`` (P, R, V) with its in-sentence and bare rows pointed again at each of P
        answer positions: alpha_t = softmax_i(tau m_i + (W rms(h_t)) . rms(v_i) / sqrt(H)), ``hidden``
        (P, H) their states, ``again`` each position's third item of ``lookup``. A question's
        pointer is one for its whole answer; a caption names nothing, so its pointer is the
        likeliest object's, and every object it writes took that object's words ("a yellow
        triangle in the top right corner, a yellow triangle", run 19). W starts at zero, so the
        pointer starts as the question's.

        With ``stay`` the pointer also remembers its path along the answer (docs/design.md,
        "Where the pointer was"):

            alpha_t = softmax_i(tau m_i + q_t . k_i + g_t log(alpha_{t-1,i} + d) - w_t sum_{s<t} alpha_{s,i})

        g_t, w_t from the position's state (zero at the start): a shape word can stay on the token
        whose colour the word before took, and the next object of a list can leave those already
        written. Without ``trail`` the positions of one question (one table of ``again``) are one
        answer, in order (teacher forcing: the path is run position by position); with a
        ``Trail`` each of the P positions is the next word of its own answer, written one word at
        a time, and the trail is carried on to the next."""
        groups: dict = {}
        for p, item in enumerate(again):  # positions of one question share its tables
            groups.setdefault(id(item) if trail is None else p, (item, []))[1].append(p)
        out = log_c.clone()
        with torch.autocast(hidden.device.type, enabled=False):  # probabilities in float32 under bf16 autocast
            h = rms(hidden.float())
            query = self.follow(h) / math.sqrt(hidden.shape[-1])  # (P, H)
            rows = []  # per group: its tokens' word table, its positions, their pointer logits
            for (fit, named_logp, keys), at in groups.values():
                at = torch.tensor(at, device=hidden.device)
                rows.append((named_logp, at, fit[None].float() + query[at] @ keys.float().T))
            if self.stay is None:
                alphas = [z.softmax(-1) for _, _, z in rows]
            elif trail is not None:  # one position a group
                alphas = self._walk(torch.cat([z for _, _, z in rows]), self.stay(h), trail).split(1)
            else:
                alphas = self._paths([z for _, _, z in rows], self.stay(h)[torch.cat([at for _, at, _ in rows])])
            for (named_logp, at, _), alpha in zip(rows, alphas):
                c = alpha @ named_logp.float().exp()  # (p, V): a matmul, not a (p, M, V) logsumexp
                bare = c.new_zeros(c.shape).index_add(1, self.bare_of, c)
                out[at, :2] = torch.stack([c, bare], 1).clamp_min(1e-30).log().to(out.dtype)
        return out

    STAY_FLOOR = 1e-3  # d: log(alpha + d) of a token the pointer was not on is finite, log d

    def _step(self, base: torch.Tensor, gates: torch.Tensor, prev: torch.Tensor | None,
              covered: torch.Tensor | float) -> torch.Tensor:
        """One word of the path: (N, M) pointer from the (N, M) logits ``base``, (N, 2) ``gates``
        (g, w), the word before's pointer ``prev`` (None at an answer's first word) and the mass
        ``covered`` so far."""
        if prev is not None:
            base = base + gates[:, :1] * torch.log(prev + self.STAY_FLOOR) - gates[:, 1:] * covered
        return base.softmax(-1)

    def _paths(self, logits: list, gates: torch.Tensor) -> list:
        """Teacher forcing: each group's (p, M) pointers along its answer from its (p, M)
        ``logits``, ``gates`` (sum of p, 2) the groups' positions' gates in the same order, all
        groups stepped together (padded to the longest), one position at a time."""
        sizes = [len(z) for z in logits]
        padded = nn.utils.rnn.pad_sequence(logits, batch_first=True)  # (G, T, M)
        g = nn.utils.rnn.pad_sequence(gates.split(sizes), batch_first=True)  # (G, T, 2)
        prev, covered, path = None, padded.new_zeros(padded.shape[0], padded.shape[2]), []
        for t in range(padded.shape[1]):
            alpha = self._step(padded[:, t], g[:, t], prev, covered)
            path.append(alpha)
            prev, covered = alpha, covered + alpha
        path = torch.stack(path, 1)
        return [path[j, :n] for j, n in enumerate(sizes)]

    def _walk(self, logits: torch.Tensor, gates: torch.Tensor, trail: Trail) -> torch.Tensor:
        """Writing: (P, M) the pointer at the next word of each of P answers, from their (P, M)
        ``logits`` and (P, 2) ``gates``; the trail moves on by it."""
        alpha = self._step(logits, gates, trail.prev, trail.covered)
        trail.prev = alpha.detach()
        trail.covered = trail.covered + trail.prev
        return alpha

    def mix(self, hidden: torch.Tensor, logits: torch.Tensor, copy_logp: torch.Tensor) -> torch.Tensor:
        """(P, V_all) next-word log-probabilities at P answer positions: ``hidden`` (P, H) their
        states, ``logits`` (P, V_all) the LLM's, ``copy_logp`` (P, R, V) each position's copy
        over the text words (the first V ids; the added tokens are not offered), in-sentence and
        bare forms, and with the count its row: p_t(y) is then also multiplied by P(n = y)^gamma_t
        at number words, gamma_t = w' . rms(h_t) + b' (0 at the start)."""
        h = rms(hidden.float())
        beta = self.strength(h)  # (P, 1)
        f = self.form(h)  # (P, 1) in-sentence form against bare form
        copy = torch.logaddexp(copy_logp[:, 0] + nn.functional.logsigmoid(f),
                               copy_logp[:, 1] + nn.functional.logsigmoid(-f))
        copy = torch.logaddexp(copy, copy.new_tensor(math.log(self.eps)))  # log(c + eps)
        extra = logits.shape[-1] - copy.shape[-1]
        if extra:
            copy = torch.cat([copy, copy.new_full((copy.shape[0], extra), math.log(self.eps))], -1)
        out = logits.float() + beta * copy
        if copy_logp.shape[1] > 2:  # the count: 0 at every word that is not a number (or "no"/"yes")
            counted = copy_logp[:, 2]
            if extra:
                counted = torch.cat([counted, counted.new_zeros((counted.shape[0], extra))], -1)
            out = out + self.count_strength(h) * counted
        return out.log_softmax(-1)


class Trail:
    """Where the pointer of each answer being written has been (``NamedCopy.move`` with stay):
    its pointer at the last word (None before the first), and the sum of its pointers so far."""

    def __init__(self):
        self.prev: torch.Tensor | None = None
        self.covered: torch.Tensor | float = 0.0


NO_MASS = -1e4  # log of "cannot be": finite, so the count's sums keep finite gradients


def count_distribution(logit_q: torch.Tensor, size: int) -> torch.Tensor:
    """(size,) log P(n = k), k < size, of the number n of tokens that are what a question counts,
    each token i independently so with probability sigmoid(logit_q[i]) (a Poisson binomial;
    the mass past size - 1 is dropped)."""
    log_q, log_not = nn.functional.logsigmoid(logit_q), nn.functional.logsigmoid(-logit_q)
    log_p = logit_q.new_full((size,), NO_MASS)
    log_p[0] = 0.0
    for i in range(logit_q.shape[0]):
        moved = torch.cat([log_p.new_full((1,), NO_MASS), log_p[:-1]])
        log_p = torch.logaddexp(log_p + log_not[i], moved + log_q[i])
    return log_p


def build_named_copy(tokenizer, num_words: int, hidden_size: int, *, named_copy: bool, where_feats: int = 0,
                     copy_count: bool = False, copy_follow: bool = False,
                     count_exist: bool = False, copy_stay: bool = False) -> NamedCopy | None:
    """The model's named copy from its options (``model.named_copy``, ``copy_where`` as
    ``where_feats`` > 0, ``copy_count``, ``copy_follow``, ``count_exist``, ``copy_stay``) over the tokenizer's
    first ``num_words`` ids (the text words), or None where ``named_copy`` is off; an option
    that needs another which is off, or words the tokenizer cannot say as one token, get a
    clear error."""
    needs_copy = {"copy_where": (where_feats, "adds to the named copy's read"),
                  "copy_count": (copy_count, "counts the tokens the named copy's question names"),
                  "copy_follow": (copy_follow, "moves the named copy's pointer along an answer"),
                  "copy_stay": (copy_stay, "remembers where the named copy's moving pointer was")}
    for name, (on, what) in needs_copy.items():
        if on and not named_copy:
            raise ValueError(f"model.{name} {what}: it needs model.named_copy=true")
    if copy_stay and not copy_follow:
        raise ValueError("model.copy_stay remembers where the pointer of model.copy_follow was, which is off")
    if count_exist and not copy_count:
        raise ValueError("model.count_exist answers existence from the count of model.copy_count, which is off")
    if not named_copy:
        return None
    count_ids = count_forms(tokenizer) if copy_count else None
    if copy_count and count_ids is None:
        raise ValueError("model.copy_count: the tokenizer says none of the numbers 0 to 9 as one token")
    exist_ids = exist_forms(tokenizer) if count_exist else None
    if count_exist and exist_ids is None:
        raise ValueError('model.count_exist: the tokenizer must say "no" and "yes" as one token each')
    return NamedCopy(hidden_size, bare_forms(tokenizer, num_words), where_feats=where_feats, count_ids=count_ids,
                     singular_of=singular_forms(tokenizer, num_words) if copy_count else None,
                     follow=copy_follow, exist_ids=exist_ids, stay=copy_stay)


def set_count_existence(model, on: bool) -> None:
    """From now on ``model`` (a VisionLLM) answers existence from the count ("no" at P(n = 0),
    "yes" at P(n > 0); ``model.count_exist``) or not, whatever it was built with: this adds no
    weights, so a model trained either way can answer either way (``task.vqa.count_exist``)."""
    copy = getattr(model, "named_copy", None)
    if not on:
        if copy is not None:
            copy.set_exist_ids(None)
        return
    if copy is None or copy.count_ids is None:
        raise ValueError("task.vqa.count_exist: existence answers come from the count of model.copy_count, "
                         "which this model was built without")
    ids = exist_forms(model.llm.tokenizer)
    if ids is None:
        raise ValueError('task.vqa.count_exist: the tokenizer must say "no" and "yes" as one token each')
    copy.set_exist_ids(ids)


@contextmanager
def count_existence(model, on: bool):
    """``set_count_existence`` within the block only."""
    copy = getattr(model, "named_copy", None)
    kept = None if copy is None else copy.exist_ids
    set_count_existence(model, on)
    try:
        yield
    finally:
        if copy is not None:
            copy.set_exist_ids(kept)


def log_some(logit_q: torch.Tensor) -> torch.Tensor:
    """log P(n > 0) of the count of ``count_distribution``: the log-probability that some token
    is what the question counts, as a sum over which is the first (token i, none before it),
    exact where 1 - P(n = 0) would round to 0."""
    log_not = nn.functional.logsigmoid(-logit_q)
    before = torch.cumsum(log_not, 0) - log_not
    return torch.logsumexp(nn.functional.logsigmoid(logit_q) + before, 0)


def singular_forms(tokenizer, num_words: int) -> torch.Tensor:
    """(num_words,) for each word id, the id of its singular where the word is an English plural
    ("s" or "es" after a word of four letters or more) whose singular is one token below
    ``num_words`` (" stars" -> " star", " boxes" -> " box"), else itself."""
    def singulars(text: str) -> list[str]:
        if not text.endswith("s") or len(text.strip()) < 4 or not text.strip().isalpha():
            return []
        return [text[:-1], text[:-2]] if text.endswith("es") else [text[:-1]]

    return _word_map(tokenizer, num_words, singulars)


def word_forms(tokenizer, words: list[str]) -> torch.Tensor:
    """(len(words), 2) the id of each word, bare and after a space, where it is one token (-1
    where not)."""
    ids = torch.full((len(words), 2), -1, dtype=torch.long)
    for k, word in enumerate(words):
        for f, text in enumerate((word, " " + word)):
            enc = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids[k, f] = enc[0]
    return ids


def count_forms(tokenizer, largest: int = 9) -> torch.Tensor | None:
    """(largest + 1, 2) the word ids of "0" to str(largest) (``word_forms``); None where no
    number is one token."""
    ids = word_forms(tokenizer, [str(k) for k in range(largest + 1)])
    return ids if (ids >= 0).any() else None


def exist_forms(tokenizer) -> torch.Tensor | None:
    """(2, 2) the word ids of "no" and "yes" (``word_forms``); None unless each is one token in
    one form at least."""
    ids = word_forms(tokenizer, ["no", "yes"])
    return ids if (ids >= 0).any(-1).all() else None


def bare_forms(tokenizer, num_words: int) -> torch.Tensor:
    """(num_words,) for each word id below ``num_words``, the id of the same word without its
    leading space (" red" -> "red") where that is one token below ``num_words``, else itself."""
    return _word_map(tokenizer, num_words, lambda text: [text.strip()] if text.startswith(" ") and text.strip() else [])


def _word_map(tokenizer, num_words: int, rewrites) -> torch.Tensor:
    """(num_words,) for each word id, the id of the first of ``rewrites(its text)`` that is one
    token below ``num_words``, else the id itself (all candidates tokenized in one call)."""
    ids = torch.arange(num_words)
    wanted = [(i, c) for i in range(num_words) for c in rewrites(tokenizer.decode([i]))]
    if not wanted:
        return ids
    enc = tokenizer([c for _, c in wanted], add_special_tokens=False)["input_ids"]
    done: set[int] = set()
    for (i, _), e in zip(wanted, enc):
        if i not in done and len(e) == 1 and 0 <= e[0] < num_words:
            ids[i] = e[0]
            done.add(i)
    return ids
