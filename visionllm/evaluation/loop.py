"""The batched predict loop every evaluator shares."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from visionllm.data.transforms import collate


@torch.no_grad()
def predict_batches(model, samples: Iterable[dict], batch_size: int, **predict_options) -> Iterator[tuple[dict, dict]]:
    """Run ``model.predict`` (with ``predict_options``) over samples in batches; yield (sample,
    its output) in order. The model is in eval mode meanwhile and gets its training mode back
    afterwards."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pending: list[dict] = []

    def flush():
        batch = collate(pending)
        batch["images"], batch["pixel_mask"] = batch["images"].to(device), batch["pixel_mask"].to(device)
        outs = model.predict(batch, **predict_options)
        done = list(zip(pending, outs))
        pending.clear()
        return done

    try:
        for s in samples:
            pending.append(s)
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()
    finally:
        model.train(was_training)


def num_images(reader, max_images) -> int:
    return len(reader) if max_images is None else min(len(reader), max_images)


def location_options(window: int) -> dict:
    """``model.predict``'s options for a location window: none for the default (the likeliest bin),
    so models without the option (the specialist) are asked as before."""
    return {"location_window": int(window)} if window else {}
