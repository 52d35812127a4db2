"""Train VisionLLM: python tools/train.py experiment=NAME [trainer.max_steps=N] [output_dir=DIR] [seed=S]"""

import logging

import hydra
from omegaconf import DictConfig

from visionllm.engine.train import train


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("visionllm").setLevel(logging.INFO)
    train(cfg)


if __name__ == "__main__":
    main()
