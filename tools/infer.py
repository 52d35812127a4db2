"""Ask a trained VisionLLM anything, in words:

    python tools/infer.py checkpoint=DIR image=PATH instruction="TEXT" [output=FILE.json] [visualize=FILE.png]
                          [score_threshold=0.3] [max_objects=100] [per_class=N]

Prints and writes {"text": <printed answer>, "objects": [{"label", "bbox": [x1, y1, x2, y2], "score"}]}
with boxes in pixels of the original image. ``per_class=1`` keeps the best object of each class:
one box per referring expression ("Find the objects in <image> described by {'the lowest blue
shape': <c0>, 'the rightmost blue shape': <c1>}, one bounding box each as ...").
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
    from visionllm.api import VisionLLM, check_per_class
    from visionllm.data.io import load_image
    from visionllm.tasks.instructions import InstructionError, parse_instruction
    from visionllm.visualize import draw_answer

    if INSTRUCTION is None or IMAGE is None:
        sys.exit("usage: tools/infer.py checkpoint=DIR image=PATH instruction=\"TEXT\" [output=FILE.json] [visualize=FILE.png] [per_class=N]")
    try:
        parse_instruction(INSTRUCTION)
        check_per_class(cfg.per_class)
        image = load_image(IMAGE)
    except (InstructionError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    model = VisionLLM.from_pretrained(cfg.checkpoint, device=cfg.device)
    answer = model.predict(image, INSTRUCTION, score_threshold=cfg.score_threshold, max_objects=cfg.max_objects,
                           per_class=cfg.per_class)
    text = json.dumps(answer, indent=2)
    print(text)
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(text + "\n")
    if cfg.visualize:
        draw_answer(image, answer, cfg.visualize)


if __name__ == "__main__":
    main()
