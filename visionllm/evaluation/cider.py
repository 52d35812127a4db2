"""CIDEr-D in Python, fast enough to score sampled captions inside a training step.

The metric of Vedantam et al. (2015), in the "D" form that the COCO caption toolkit reports as
CIDEr: n-grams of 1 to 4 words weighted by tf-idf, each candidate n-gram's weight clipped at
the reference's, a Gaussian penalty (sigma 6) on the length difference to each reference, the
mean over n and over references, times 10. Document frequencies come from a fixed corpus (one
document per image: the set of n-grams of all its references), as self-critical training
(Rennie et al. 2017) takes them from the training captions, where the toolkit takes them from
the test set it scores. Words are lower-cased alphanumeric runs, as the toolkit's PTB tokenizer
leaves them once punctuation is dropped; ``tests/test_cider.py`` checks the scores against
pycocoevalcap's.
"""

from __future__ import annotations

import math
import re
from collections import Counter

MAX_N = 4
SIGMA = 6.0
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], max_n: int = MAX_N) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


class CiderD:
    """``CiderD(corpus)`` with ``corpus`` a list of reference sets (one list of captions per
    image); ``score(candidate, references) -> float``."""

    def __init__(self, corpus: list[list[str]]):
        if not corpus:
            raise ValueError("CIDEr-D needs a corpus of reference captions for its document frequencies; it is empty")
        self.df: Counter = Counter()
        for refs in corpus:
            self.df.update(set().union(*(ngrams(words(r)).keys() for r in refs)) if refs else set())
        self.log_docs = math.log(float(len(corpus)))

    def _vector(self, text: str) -> tuple[list[dict], list[float], int]:
        toks = words(text)
        vec: list[dict] = [{} for _ in range(MAX_N)]
        norm = [0.0] * MAX_N
        for gram, tf in ngrams(toks).items():
            n = len(gram) - 1
            w = tf * (self.log_docs - math.log(max(1.0, self.df.get(gram, 0))))
            vec[n][gram] = w
            norm[n] += w * w
        return vec, [math.sqrt(x) for x in norm], len(toks)

    def score(self, candidate: str, references: list[str]) -> float:
        if not references:
            raise ValueError("CIDEr-D of a caption needs at least one reference")
        hyp, hyp_norm, hyp_len = self._vector(candidate)
        total = 0.0
        for ref_text in references:
            ref, ref_norm, ref_len = self._vector(ref_text)
            penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * SIGMA**2))
            for n in range(MAX_N):
                if hyp_norm[n] == 0 or ref_norm[n] == 0:
                    continue
                dot = sum(min(w, ref[n][g]) * ref[n][g] for g, w in hyp[n].items() if g in ref[n])
                total += dot / (hyp_norm[n] * ref_norm[n]) * penalty
        return 10.0 * total / MAX_N / len(references)
