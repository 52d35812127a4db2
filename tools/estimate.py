"""Plan a training run: parameters and GPU memory per rank, without building any weights.

    python tools/estimate.py experiment=NAME [output_dir=DIR] [trainer.precision=bf16|fp32]
        [trainer.strategy=ddp|fsdp] [trainer.world_size=N] [model.llm.gradient_checkpointing=BOOL]

Takes the same overrides as tools/train.py; writes OUTPUT_DIR/estimate.json and prints a table
(method and assumptions: visionllm/engine/estimate.py).
"""

import json
import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from visionllm.engine.estimate import estimate


def format_table(est: dict) -> str:
    """A readable summary of ``estimate``'s result."""
    s, q = est["settings"], est["sequence"]
    lines = [f"{'parameters':<30}{'all':>16}{'trainable':>16}",
             f"  {'total':<28}{est['params_total']:>16,}{est['params_trainable']:>16,}"
             f"  ({100 * est['params_trainable'] / est['params_total']:.2f}% trainable)"]
    for k, v in est["params"].items():
        lines.append(f"    {k:<26}{v:>16,}{est['params_trainable_by_component'][k]:>16,}")
    lines += ["sequence",
              f"  instruction {q['instruction_tokens']} tokens: {q['classes']} class names from {q['class_names_from']}; {q['counted']}",
              f"  LLM {q['llm_tokens']} tokens = instruction + {q['image_tokens']} image tokens + {q['query_slots']} query slots ({q['answer']});"
              f" BERT {q['text_encoder_tokens']}; image {q['image_size']} px; batch {q['batch_size']}",
              f"memory per GPU (GiB): precision {s['precision']}, {s['strategy']} x{s['world_size']}, "
              f"LLM checkpointing {'on' if s['checkpointing'] else 'off'}"]
    for k, v in est["memory_gib"].items():
        if k != "total":
            lines.append(f"  {k:<34}{v:>9.2f}")
    lines.append(f"  {'TOTAL':<34}{est['est_memory_gib_per_gpu']:>9.2f}")
    lines.append(f"verdict ({est['gpu_gib']:.0f} GB GPU, <= {est['assumptions']['fits_if_below_gib']:.0f} GiB): {est['verdict']}")
    lines.append("other settings (GiB): " + "; ".join(f"{k}: {v}" for k, v in est["scenarios_gib"].items()))
    lines += [f"note: {n}" for n in est["notes"]]
    return "\n".join(lines)


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("visionllm").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames, not ours to act on
    for key in ("output_dir", "data.root"):  # relative to where the command was typed
        if OmegaConf.select(cfg, key):
            OmegaConf.update(cfg, key, to_absolute_path(str(OmegaConf.select(cfg, key))))
    est = estimate(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimate.json").write_text(json.dumps(est, indent=2))
    print(format_table(est))
    print(f"wrote {out / 'estimate.json'}")


# Settings the planner reads that a config may not hold (world_size never is: torchrun sets it):
# typed plainly, they become add-or-override (++) so Hydra's struct mode accepts them either way.
FREE_KEYS = ("trainer.precision", "trainer.strategy", "trainer.world_size")

if __name__ == "__main__":
    sys.argv = [("++" + a if a.partition("=")[0] in FREE_KEYS else a) for a in sys.argv]
    main()
