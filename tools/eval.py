"""Evaluate a checkpoint:

    python tools/eval.py checkpoint=DIR task=detection data=shapes|coco [data.root=DIR] [output_dir=DIR]

Writes OUTPUT_DIR/metrics.json (flat: bbox_AP, bbox_AP50, ...) and OUTPUT_DIR/detections.json
(a COCO results file that COCO.loadRes accepts), and prints pycocotools' table.
"""

import json
import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("visionllm.eval")


def evaluate(cfg: DictConfig) -> dict:
    from visionllm.cli import pick_device
    from visionllm.engine.checkpoint import load_model
    from visionllm.evaluation.detection import evaluate_detection

    if cfg.task != "detection":
        raise ValueError(f"task={cfg.task} is not available yet; known: detection")
    if cfg.data.root:
        cfg.data.root = to_absolute_path(cfg.data.root)
    ckpt = Path(to_absolute_path(cfg.checkpoint))
    model, mcfg = load_model(ckpt, pick_device(cfg.device))
    reader = instantiate(cfg.data.val.detection)
    chunk = cfg.chunk or mcfg.task.eval_chunk
    metrics, results, table = evaluate_detection(
        model, reader, image_size=mcfg.data.image_size, chunk=chunk, batch_size=cfg.batch_size, max_images=cfg.max_images
    )
    out = Path(to_absolute_path(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "detections.json").write_text(json.dumps(results))
    print(table)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'metrics.json'} and {out / 'detections.json'}")
    return metrics


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    OmegaConf.set_struct(cfg, False)
    evaluate(cfg)


if __name__ == "__main__":
    main()
