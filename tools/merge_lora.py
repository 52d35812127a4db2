"""Merge a VisionLLM checkpoint's LoRA adapter (and its trained token rows) into the base LLM:

    python tools/merge_lora.py checkpoint=DIR output=DIR [adapter=DIR]

``output`` becomes a plain transformers directory (``AutoModelForCausalLM.from_pretrained``)
with the tokenizer, VisionLLM tokens included. ``adapter=DIR`` also writes the adapter alone in
peft's format (needs a pretrained base: ``model.llm.pretrained`` in the checkpoint's config).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEYS = ("checkpoint", "output", "adapter")


def parse(argv: list[str]) -> dict[str, str]:
    args = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in KEYS or not value:
            raise SystemExit(f"usage: python tools/merge_lora.py checkpoint=DIR output=DIR [adapter=DIR]; got {a!r}")
        args[key] = value
    if not {"checkpoint", "output"} <= set(args):
        raise SystemExit("usage: python tools/merge_lora.py checkpoint=DIR output=DIR [adapter=DIR]")
    return args


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from visionllm.engine.adapters import merge_lora, save_lora_adapter
    from visionllm.engine.checkpoint import load_model

    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if "adapter" in args:
            model, cfg = load_model(args["checkpoint"])
            out = save_lora_adapter(model, args["adapter"], OmegaConf.select(cfg, "model.llm.pretrained"))
            print(f"adapter: {out}")
        out = merge_lora(args["checkpoint"], args["output"])
    except (FileNotFoundError, ValueError) as e:  # a wrong path or a checkpoint that cannot be exported
        raise SystemExit(f"error: {e}") from None
    print(f"merged model: {out}")


if __name__ == "__main__":
    main()
