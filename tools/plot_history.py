"""Training curves of a run, per task: the losses and every evaluated metric over steps.

    python tools/plot_history.py RUN_DIR [--out FILE.png] [--evals STEP=EVAL_DIR ...]

Reads RUN_DIR/history.json (written by tools/train.py) and draws one panel for the losses and
one per task's headline metrics. ``--evals`` adds points from evaluations made afterwards
(``tools/eval.py checkpoint=RUN_DIR/checkpoints/step_N output_dir=EVAL_DIR``), each at its
step: a run that evaluated only at its end still gets curves from its kept checkpoints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = {
    "detection": ["bbox_AP", "bbox_AP50"],
    "segmentation": ["segm_AP", "segm_AP50"],
    "grounding": ["grounding_P@0.5"],
    "caption": ["caption_CIDEr", "caption_BLEU-4"],
    "vqa": ["vqa_accuracy"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--evals", nargs="*", default=[], metavar="STEP=EVAL_DIR")
    args = ap.parse_args()
    hist = json.loads((args.run_dir / "history.json").read_text())
    train = [h for h in hist if "loss" in h]
    evals = [h for h in hist if "loss" not in h]
    for item in args.evals:
        step, sep, where = item.partition("=")
        if not sep or not step.isdigit():
            raise SystemExit(f"--evals takes STEP=EVAL_DIR (got {item!r})")
        evals.append({"step": int(step), **json.loads((Path(where) / "metrics.json").read_text())})
    evals.sort(key=lambda h: h["step"])
    panels = [(t, keys) for t, keys in PANELS.items() if any(k in h for h in evals for k in keys)]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(4 * (1 + len(panels)), 3.4), squeeze=False)
    ax = axes[0, 0]
    loss_keys = sorted({k for h in train for k in h if k.startswith("loss_")})
    for k in loss_keys:
        pts = [(h["step"], h[k]) for h in train if k in h]
        ax.plot(*zip(*pts), label=k.removeprefix("loss_"), linewidth=1)
    ax.set_yscale("log")
    ax.set_title("training losses")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    for ax, (task, keys) in zip(axes[0, 1:], panels):
        for k in keys:
            pts = [(h["step"], h[k]) for h in evals if k in h]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=k)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = args.out or args.run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
