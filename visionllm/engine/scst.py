"""Self-critical caption training [Rennie et al. 2017, "Self-critical Sequence Training for Image
Captioning"; the baseline of Luo 2020, "A Better Variant of Self-Critical Sequence Training"].

Cross-entropy teaches a caption model each reference in turn; where an image's references
differ in style (here: a count, the colours, one object's place, a list of all), the model
learns to write one of them, and CIDEr, which rewards what the references share, scores it
low. Self-critical training samples K captions per caption request from the model itself,
scores each against all the image's references (CIDEr-D, ``evaluation/cider.py``, document
frequencies from the training captions) less how far it misses the length wish, and raises the
log-probability of each in proportion to how much better it scored than the mean of the other
K - 1 (the baseline). The loss is the model's own text loss with each sampled caption as the
target, weighted by that advantage (``targets[b]["weight"]`` in ``VisionLLM._text_loss``).

Options (``task.caption.scst``, off when absent): ``start`` (the fraction of the run after which
caption requests train this way), ``samples`` (K), ``temperature``, ``length_weight`` (the
reward lost per whole length of the wish missed) and ``max_new_tokens``.
"""

from __future__ import annotations

import torch

from visionllm.evaluation.cider import CiderD
from visionllm.tasks import caption

DEFAULTS = {"start": 0.6, "samples": 5, "temperature": 1.0, "length_weight": 1.0, "max_new_tokens": 48}


class SelfCritical:
    def __init__(self, corpus: list[list[str]], *, start: float, samples: int, temperature: float,
                 length_weight: float, max_new_tokens: int, max_steps: int, seed: int = 0,
                 device: str | torch.device = "cpu"):
        if samples < 2:
            raise ValueError(f"task.caption.scst.samples must be at least 2 (each sample's baseline is the mean of "
                             f"the others), not {samples}")
        if temperature <= 0:
            raise ValueError(f"task.caption.scst.temperature must be above 0 (captions are sampled), not {temperature}")
        if not 0 <= start <= 1:
            raise ValueError(f"task.caption.scst.start is a fraction of the run, in [0, 1], not {start}")
        self.cider = CiderD(corpus)
        self.samples, self.temperature = int(samples), float(temperature)
        self.length_weight, self.max_new_tokens = float(length_weight), int(max_new_tokens)
        self.start_step = int(round(start * max_steps))
        self.generator = torch.Generator(device=device).manual_seed(seed)  # in the trainer state, for resume

    def active(self, step: int) -> bool:
        """Whether the step after ``step`` steps trains captions this way."""
        return step >= self.start_step

    def reward(self, text: str, references: list[str], wish: tuple[str, int]) -> float:
        kind, asked = wish
        miss = caption.length_miss(kind, asked, caption.num_words(text))
        return self.cider.score(text, references) - self.length_weight * miss

    def expand(self, model, batch: dict) -> tuple[dict, dict]:
        """``batch`` with each caption row replaced by ``samples`` rows of the model's own
        captions, each weighted by its advantage; -> (batch, {"scst_reward", "scst_cider"}: the
        mean over the samples). Rows of other tasks are kept as they are."""
        targets = batch["targets"]
        rows = [b for b, t in enumerate(targets) if t and t.get("references")]
        if not rows:
            return batch, {}
        K = self.samples
        pick = [b for b in rows for _ in range(K)]
        sub = {"images": batch["images"][rows], "pixel_mask": batch["pixel_mask"][rows],
               "instructions": [batch["instructions"][b] for b in rows], "requests": [batch["requests"][b] for b in rows]}
        was_training = model.training
        model.eval()
        try:
            drawn = model.predict(sub, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                  generator=self.generator, samples=K)
        finally:
            model.train(was_training)
        texts = [t for o in drawn for t in o["texts"]]
        token_ids = [i for o in drawn for i in o["token_ids"]]
        rewards, ciders = [], []
        for i, b in enumerate(pick):
            ciders.append(self.cider.score(texts[i], targets[b]["references"]))
            rewards.append(self.reward(texts[i], targets[b]["references"], targets[b]["wish"]))
        r = torch.tensor(rewards).view(len(rows), K)
        advantage = r - (r.sum(1, keepdim=True) - r) / (K - 1)  # each against the mean of the others
        keep = [b for b in range(len(targets)) if b not in set(rows)]
        order = keep + pick
        new_targets = [targets[b] for b in keep] + [
            {"text": texts[i], "ids": token_ids[i], "weight": float(advantage.view(-1)[i])} for i in range(len(pick))]
        out = {"images": batch["images"][order], "pixel_mask": batch["pixel_mask"][order],
               "instructions": [batch["instructions"][b] for b in order], "requests": [batch["requests"][b] for b in order],
               "targets": new_targets, "meta": [batch["meta"][b] for b in order]}
        return out, {"scst_reward": float(r.mean()), "scst_cider": sum(ciders) / len(ciders)}


def from_config(opts: dict | None, reader, *, max_steps: int, seed: int = 0,
                device: str | torch.device = "cpu") -> SelfCritical | None:
    """The trainer's self-critical stage from ``task.caption.scst`` (None: off), with document
    frequencies from ``reader``'s captions."""
    if not opts:
        return None
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"task.caption.scst: unknown option(s) {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
    if not hasattr(reader, "reference_captions"):
        raise ValueError(f"task.caption.scst: the caption reader ({type(reader).__name__}) cannot list its captions")
    return SelfCritical(reader.reference_captions(), max_steps=max_steps, seed=seed, device=device,
                        **{**DEFAULTS, **opts})
