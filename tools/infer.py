"""Ask a trained VisionLLM anything, in words:

    python tools/infer.py checkpoint=DIR image=PATH instruction="TEXT" [output=FILE.json] [visualize=FILE.png]

Prints and writes {"text": <printed answer>, "objects": [{"label", "bbox": [x1, y1, x2, y2], "score"}]}
with boxes in pixels of the original image.
"""

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from visionllm.cli import take_aside

INSTRUCTION = take_aside("instruction")
IMAGE = take_aside("image")


@hydra.main(config_path="../conf", config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from visionllm.api import VisionLLM
    from visionllm.data.io import load_image
    from visionllm.tasks.instructions import InstructionError, parse_instruction
    from visionllm.visualize import draw_answer

    if INSTRUCTION is None or IMAGE is None:
        sys.exit("usage: tools/infer.py checkpoint=DIR image=PATH instruction=\"TEXT\" [output=FILE.json] [visualize=FILE.png]")
    try:
        parse_instruction(INSTRUCTION)
        image = load_image(IMAGE)
    except (InstructionError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    model = VisionLLM.from_pretrained(cfg.checkpoint, device=cfg.device)
    answer = model.predict(image, INSTRUCTION, score_threshold=cfg.score_threshold, max_objects=cfg.max_objects)
    text = json.dumps(answer, indent=2)
    print(text)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text + "\n")
    if cfg.visualize:
        draw_answer(image, answer, cfg.visualize)


if __name__ == "__main__":
    main()
