"""VQA accuracy (METHOD.md §7): exact match after normalisation where the answer is short
(at most three words); free-text answers (LLaVA's descriptions, reasoning) are counted and
kept in the results for reading, not scored.
"""

from __future__ import annotations

from tqdm import tqdm

from visionllm.evaluation.loop import num_images, predict_batches
from visionllm.tasks import vqa


def evaluate_vqa(
    model, reader, *, image_size: int, batch_size: int = 8, max_images=None, progress=True
) -> tuple[dict, list[dict], str]:
    """-> ({"vqa_accuracy", "vqa_short_answers", "vqa_free_answers"}, results, printed table).
    ``max_images`` caps the number of conversations; every turn of each is asked."""

    def samples():
        for i in tqdm(range(num_images(reader, max_images)), desc="eval vqa", disable=not progress, leave=False):
            yield from vqa.eval_samples(reader[i], image_size=image_size)

    results = []
    for s, out in predict_batches(model, samples(), batch_size):
        meta = s["meta"]
        short = vqa.is_short(meta["answer"])
        results.append(
            {
                "question_id": meta["question_id"],
                "image_id": meta["image_id"],
                "question": meta["question"],
                "answer": meta["answer"],
                "prediction": out["text"],
                "short": short,
                "correct": vqa.answers_match(out["text"], meta["answer"]) if short else None,
            }
        )
    scored = [r["correct"] for r in results if r["short"]]
    metrics = {
        "vqa_accuracy": sum(scored) / len(scored) if scored else 0.0,
        "vqa_short_answers": float(len(scored)),
        "vqa_free_answers": float(len(results) - len(scored)),
    }
    table = "\n".join(f"{k:<20} {v:8.3f}" if k == "vqa_accuracy" else f"{k:<20} {int(v):8d}" for k, v in metrics.items())
    return metrics, results, table
