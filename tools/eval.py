"""Evaluate a checkpoint:

    python tools/eval.py checkpoint=DIR task=all|detection|segmentation|grounding|caption|vqa
        data=shapes|coco|refcoco [data.root=DIR] [output_dir=DIR]

Writes OUTPUT_DIR/metrics.json (flat: bbox_AP…, segm_AP…, grounding_P@0.5, caption_BLEU-4,
caption_CIDEr, caption_length_error, vqa_accuracy) and each task's results in its published
format (detections.json is a COCO results file that COCO.loadRes accepts), and prints the tables.
"""

import json
import logging
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("visionllm.eval")
RESULT_FILES = {"detection": "detections.json", "segmentation": "segmentations.json", "grounding": "grounding.json",
                "caption": "captions.json", "vqa": "vqa.json"}


def evaluate(cfg: DictConfig) -> dict:
    from visionllm.cli import pick_device
    from visionllm.engine import tasks
    from visionllm.engine.checkpoint import load_model

    names = list(cfg.task.eval)
    for n in names:
        tasks.task_options(cfg, n)  # a clear error for an unknown task name, before any work
    if cfg.data.root:
        cfg.data.root = to_absolute_path(cfg.data.root)
    ckpt = Path(to_absolute_path(cfg.checkpoint))
    model, mcfg = load_model(ckpt, pick_device(cfg.device))
    # the checkpoint's model; the task options and data named on this command line
    run_cfg = OmegaConf.merge(mcfg, {"data": OmegaConf.to_container(cfg.data), "task": OmegaConf.to_container(cfg.task)})
    run_cfg.data.image_size = mcfg.data.image_size
    if len(names) > 1:  # several tasks: evaluate those this data set has readers for
        names = [n for n in names if OmegaConf.select(run_cfg, f"data.val.{n}") is not None]
    out = Path(to_absolute_path(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for name in names:
        reader = tasks.reader(run_cfg, "val", name)
        m, results, table = tasks.evaluate(model, run_cfg, name, reader, batch_size=cfg.batch_size,
                                           max_images=cfg.max_images, chunk=cfg.chunk)
        metrics.update(m)
        (out / RESULT_FILES[name]).write_text(json.dumps(results))
        print(f"== {name}\n{table}")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'metrics.json'}")
    return metrics


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    OmegaConf.set_struct(cfg, False)
    evaluate(cfg)


if __name__ == "__main__":
    main()
