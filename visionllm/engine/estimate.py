"""Parameter and GPU-memory planner for a training config (METHOD.md §3, §4, §6).

``estimate(cfg)`` builds the model of a ``conf/train.yaml`` config on the meta device (no
weights are allocated, a 7B preset builds in seconds), counts parameters per component, and
estimates the memory one GPU needs per rank for training:

- weights: frozen parameters at the training precision (bf16: 2 bytes), trainable ones as
  fp32 master weights (4 bytes); gradients (fp32, trainable only); AdamW state (2 x fp32);
- activations of the LLM from Korthikanti et al. 2022 ("Reducing Activation Recomputation
  in Large Transformer Models", §4.1): ``34*s*b*h + 5*a*s^2*b`` bytes per layer with 16-bit
  activations (the second term: attention scores, softmax and dropout of a materialized
  attention), plus LoRA's intermediates; with gradient checkpointing only each layer's input
  (``2*s*b*h``) is kept, and one layer is recomputed at a time during the backward pass;
- activations of the image tokenizer (backbone, BERT, deformable transformer), measured: the
  forward runs on the meta device while ``saved_tensors_hooks`` record what autograd keeps;
  stand-ins for the fused GPU kernels (native deformable op, SDPA) keep only their inputs;
- peft's trainable token rows: a merged (V, H) copy in the forward, a dense gradient after;
- FSDP (full shard) divides weights, gradients and optimizer state by the world size and
  gathers one decoder layer at a time (two in flight); DDP keeps a bucket copy of the gradients;
- a fixed CUDA context + cuBLAS/NCCL workspace overhead of 1.5 GiB.

The LLM's sequence length is measured on a real instruction: the data set's class names (or
80 COCO-length names), ``max_classes`` of them, in the longest detection template, wrapped in
the Alpaca prompt, plus M image tokens and M query groups (5 slots for boxes, 1 + 2N for
N-point polygons when the task mixture trains segmentation).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

GIB = 2**30
CUDA_OVERHEAD_GIB = 1.5  # CUDA context (~0.5 GiB) + cuBLAS/cuDNN/NCCL workspaces
GPU_GIB = 80.0
FIT_FRACTION = 0.9  # leave 10% for allocator fragmentation and spikes the model does not see
BOX_SLOTS = 5  # <cls> <x1> <y1> <x2> <y2>
COCO_NAMES = (  # the 80 COCO detection categories, in id order
    "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,stop sign,"
    "parking meter,bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,handbag,"
    "tie,suitcase,frisbee,skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,"
    "tennis racket,bottle,wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,carrot,"
    "hot dog,pizza,donut,cake,chair,couch,potted plant,bed,dining table,toilet,tv,laptop,mouse,remote,keyboard,"
    "cell phone,microwave,oven,toaster,sink,refrigerator,book,clock,vase,scissors,teddy bear,hair drier,toothbrush"
).split(",")


def settings(cfg: DictConfig) -> dict:
    """Training settings that drive memory; defaults where the config does not name them."""
    return {
        "precision": str(OmegaConf.select(cfg, "trainer.precision", default="bf16")),
        "strategy": str(OmegaConf.select(cfg, "trainer.strategy", default="ddp")),
        "world_size": int(OmegaConf.select(cfg, "trainer.world_size", default=1)),
        "checkpointing": bool(OmegaConf.select(cfg, "model.llm.gradient_checkpointing", default=False)),
        "batch_size": int(OmegaConf.select(cfg, "trainer.batch_size", default=1)),
    }


def class_names(cfg: DictConfig) -> tuple[list[str], str]:
    """The names the instructions will hold: the config's, the data set's, or COCO's 80."""
    if OmegaConf.select(cfg, "data.categories"):
        return list(cfg.data.categories), "data.categories"
    ann = OmegaConf.select(cfg, "data.val.detection.ann_file", default=None)
    if ann and Path(ann).is_file():
        cats = json.loads(Path(ann).read_text()).get("categories", [])
        if cats:
            return [c["name"] for c in cats], str(ann)
    return list(COCO_NAMES), "the 80 COCO names (no annotation file found)"


def llama_like_count(text: str, specials: set[str]) -> int:
    """Tokens a 32k SentencePiece vocabulary (LLaMA's) spends on ``text``, erring high: added
    tokens count 1; a word after a space counts 1 up to 7 letters, else one per 4 letters; a
    word glued to punctuation (``'person'``) has no word-initial piece to use and counts one
    per 4 letters; each digit and each punctuation mark (with its leading space) counts 1."""
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    n = 0
    for part in re.split(pattern, text) if specials else [text]:
        if part in specials:
            n += 1
            continue
        for tok in re.findall(r"\s?[A-Za-z]+|\s?\d|\s?[^\sA-Za-z\d]|\s+", part):
            word = tok.strip()
            initial = tok[0].isspace() or not word[:1].isalpha()
            n += 1 if initial and len(word) <= 7 else max(1, math.ceil(len(word) / 4))
    return n


def instruction_tokens(cfg: DictConfig, tokenizer, names: list[str], stand_in_vocab: bool) -> dict:
    """Length of the longest detection instruction the LLM reads, with ``task.max_classes`` names."""
    from visionllm.modeling.decoding import PROMPT
    from visionllm.tasks import detection

    k = OmegaConf.select(cfg, "task.detection.max_classes", default=None) or OmegaConf.select(cfg, "task.max_classes")
    k = min(int(k or 32), len(names))
    texts = [PROMPT.format(instruction=detection.make_instruction(names[:k], template=t)) for t in detection.TEMPLATES]
    counts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]  # + <s>
    out = {"classes": k, "tokens": max(counts), "how": "counted with the model's tokenizer"}
    if stand_in_vocab:
        # A random LLM with a real vocabulary size stands in for pretrained weights: count as
        # their tokenizer would, not as the throwaway one trained on these very instructions.
        specials = set(tokenizer.get_added_vocab())  # <image>, <ck>, ... and <s>: one token each
        est = max(llama_like_count(t, specials) for t in texts) + 1
        if est > out["tokens"]:
            out.update(tokens=est, how="estimated for a LLaMA tokenizer (no pretrained one configured)")
    return out


def query_slots(cfg: DictConfig) -> tuple[int, str]:
    """Slots per query group of the longest structured answer trained: (c, x1, y1, x2, y2) for
    boxes; 1 + 2N for N-point polygons when segmentation is in the task mixture."""
    mixture = OmegaConf.select(cfg, "task.mixture", default=None) or {OmegaConf.select(cfg, "task.name", default="detection"): 1}
    if (mixture.get("segmentation") or 0) > 0:
        n = max(OmegaConf.select(cfg, "task.segmentation.points", default=None) or [24])  # the engine's largest default
        return 1 + 2 * n, f"{n}-point polygons"
    return BOX_SLOTS, "boxes"


def _prepare_cfg(cfg: DictConfig, tok_dir: str) -> tuple[DictConfig, list[str]]:
    """A copy that builds without files it does not need: parts without a tokenizer directory
    of their own get the throwaway one; the backbone checkpoint is not read."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    notes = []
    OmegaConf.update(cfg, "model.backbone.checkpoint", None)  # values do not change counts
    for part in ("llm", "text_encoder"):
        path = OmegaConf.select(cfg, f"model.{part}.tokenizer.path", default=None)
        if not path or not Path(path).is_dir():
            OmegaConf.update(cfg, f"model.{part}.tokenizer.path", tok_dir)
    if not OmegaConf.select(cfg, "model.text_encoder.pretrained") and \
            int(OmegaConf.select(cfg, "model.text_encoder.hidden_size", default=0)) >= 768:
        notes.append("no pretrained BERT: its embedding has the throwaway tokenizer's rows; "
                     "a real vocabulary has more (BERT-base: 30,522 rows, +~23M parameters)")
    return cfg, notes


def build_meta(cfg: DictConfig):
    """Instantiate ``cfg.model`` on the meta device. Pretrained parts are built from their
    config.json alone: exact sizes, and not one weight file read."""
    from transformers import AutoConfig, AutoModelForCausalLM, BertConfig, BertModel

    import visionllm.modeling.llm as llm_module
    import visionllm.modeling.text_encoder as text_module

    class CausalLM:
        @staticmethod
        def from_pretrained(path, dtype=None, **_):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
            return model.to(dtype) if dtype is not None else model

    class Bert(BertModel):
        @classmethod
        def from_pretrained(cls, path, config=None, **kw):
            return BertModel(config or BertConfig.from_pretrained(path), **kw)

    with ExitStack() as stack:
        stack.enter_context(torch.device("meta"))
        stack.enter_context(mock.patch.object(llm_module, "AutoModelForCausalLM", CausalLM))
        stack.enter_context(mock.patch.object(text_module, "BertModel", Bert))
        return instantiate(cfg.model)


COMPONENTS = ("backbone", "text_encoder", "deformable_transformer", "llm_base", "lora", "new_token_rows", "projections")


def _component(name: str) -> str:
    for prefix, key in (("image_tokenizer.backbone.", "backbone"), ("image_tokenizer.text_encoder.", "text_encoder"),
                        ("image_tokenizer.", "deformable_transformer")):  # + queries, heads, text projection
        if name.startswith(prefix):
            return key
    if "lora_" in name or "trainable_tokens_delta" in name:
        return "lora" if "lora_" in name else "new_token_rows"
    return "llm_base" if name.startswith("llm.") else "projections"  # token_proj, loc_embed, class_pointer


def count_params(model) -> dict:
    """Parameters per component; every parameter lands in exactly one."""
    groups, trainable = dict.fromkeys(COMPONENTS, 0), dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        groups[_component(name)] += p.numel()
        trainable[_component(name)] += p.numel() if p.requires_grad else 0
    return {"total": sum(groups.values()), "trainable": sum(trainable.values()),
            "components": groups, "trainable_components": trainable}


class _KeepsInputs(torch.autograd.Function):
    """Meta-device stand-in for a fused GPU kernel: keeps ``saved`` for backward and returns an
    empty output of ``shape``, like the native deformable-attention op and SDPA's kernels."""

    @staticmethod
    def forward(ctx, shape, *saved):
        ctx.save_for_backward(*saved)
        return saved[0].new_empty(shape)

    @staticmethod
    def backward(ctx, grad):
        return (None,) * (1 + len(ctx.saved_tensors))


def _deform_standin(value, spatial_shapes, level_start_index, locations, weights, **_):
    N, _, M, D = value.shape  # the CUDA op keeps its five inputs, nothing else
    return _KeepsInputs.apply((N, locations.shape[1], M * D), value, locations, weights)


def _sdpa_standin(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # flash/mem-efficient keep out + logsumexp
    out = q.new_empty(q.shape[:-1] + v.shape[-1:])
    saved = [t for t in (q, k, v, out, lse, attn_mask) if t is not None]
    return _KeepsInputs.apply(tuple(out.shape), *saved)


def saved_activations(model, fn) -> dict:
    """Elements autograd keeps during ``fn()`` (floats, other dtypes in bytes), weights excluded."""
    params = {id(p) for p in model.parameters()}
    seen: dict[int, torch.Tensor] = {}

    def pack(t):
        base = t._base if t._base is not None else t
        if id(t) not in params and id(base) not in params:
            seen[id(base)] = base
        return t

    import visionllm.modeling.deformable as deformable

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(deformable, "multi_scale_deformable_attention", _deform_standin))
        stack.enter_context(mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _sdpa_standin))
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        out = fn()
    del out
    floats = sum(t.numel() for t in seen.values() if t.is_floating_point())
    other = sum(t.numel() * t.element_size() for t in seen.values() if not t.is_floating_point())
    return {"float_elements": floats, "other_bytes": other}


def measure(cfg: DictConfig) -> dict:
    """Everything memory depends on that needs the built model: counts, shapes, saved activations."""
    from visionllm.tasks import detection
    from visionllm.text_tokenizer import train_text_tokenizer

    names, names_from = class_names(cfg)
    # the instructions with the class names, as the tiny models' own tokenizer is trained on
    corpus = [detection.make_instruction(names[:k], template=t) for t in detection.TEMPLATES
              for k in {1, (len(names) + 1) // 2, len(names)}] + names
    with tempfile.TemporaryDirectory(prefix="visionllm-estimate-") as tok_dir:
        train_text_tokenizer(corpus, tok_dir,
                             vocab_size=int(OmegaConf.select(cfg, "tokenizer_vocab_size", default=2000)))
        built_cfg, notes = _prepare_cfg(cfg, tok_dir)
        model = build_meta(built_cfg)
    params = count_params(model)
    llm, itok = model.llm, model.image_tokenizer
    lcfg = llm.model.get_base_model().config
    # a random LLM with a fixed vocabulary size, or of a size only ever trained from weights
    stand_in = not OmegaConf.select(cfg, "model.llm.pretrained") and (
        bool(OmegaConf.select(cfg, "model.llm.vocab_size", default=None)) or lcfg.hidden_size >= 2048)
    instr = instruction_tokens(cfg, llm.tokenizer, names, stand_in)
    M = itok.num_queries
    b = settings(cfg)["batch_size"]
    slots, answer = query_slots(cfg)
    seq = instr["tokens"] - 1 + M + M * slots  # <image> becomes M tokens; M groups of `slots` queries
    text_len = min(instr["tokens"], itok.text_encoder.max_length)
    if instr["tokens"] > itok.text_encoder.max_length:
        notes.append(f"the instruction (~{instr['tokens']} tokens) exceeds the text encoder's {itok.text_encoder.max_length} "
                     "positions: BERT reads only its beginning (the LLM reads all of it)")
    S, meta = int(cfg.data.image_size), torch.device("meta")
    images, pad = torch.zeros(b, 3, S, S, device=meta), torch.zeros(b, S, S, dtype=torch.bool, device=meta)
    text = (torch.zeros(b, text_len, itok.text_encoder.hidden_size, device=meta),
            torch.zeros(b, text_len, dtype=torch.bool, device=meta))
    with mock.patch.object(itok.text_encoder, "forward", lambda texts: text):  # BERT traced apart below
        image_part = saved_activations(model, lambda: itok(images, pad, ["<image>"] * b).embeds)
    ids = torch.zeros(b, text_len, dtype=torch.long, device=meta)
    bert_part = saved_activations(model, lambda: itok.text_encoder.bert(input_ids=ids).last_hidden_state)
    lora = llm.model.peft_config["default"]
    return {
        "params": params,
        "llm": {"hidden": lcfg.hidden_size, "layers": lcfg.num_hidden_layers, "heads": lcfg.num_attention_heads,
                "vocab_rows": llm.model.get_input_embeddings().weight.shape[0],
                "layer_params": sum(p.numel() for p in llm.decoder.layers[0].parameters()),
                "lora_rank": lora.r, "lora_targets": len(lora.target_modules), "lora_dropout": lora.lora_dropout,
                "dtype": str(OmegaConf.select(cfg, "model.llm.dtype", default="float32"))},
        "sequence": {"instruction_tokens": instr["tokens"], "counted": instr["how"], "classes": instr["classes"],
                     "class_names_from": names_from, "image_tokens": M, "query_slots": M * slots, "answer": answer,
                     "llm_tokens": seq, "text_encoder_tokens": text_len, "image_size": S, "batch_size": b},
        "image_tokenizer_saved": image_part,
        "text_encoder_saved": bert_part,
        "notes": notes,
    }


def llm_activation_bytes(m: dict, *, act_bytes: int, checkpointing: bool) -> dict:
    """Korthikanti et al. 2022 per layer, scaled from 16-bit to ``act_bytes``, plus LoRA's part:
    each adapted projection keeps its rank-r intermediate (2*s*b*r) and, with lora_dropout, a
    dropped copy of its input and the mask (3*s*b*h)."""
    lo, scale = m["llm"], act_bytes / 2
    L, h, a, r = lo["layers"], lo["hidden"], lo["heads"], lo["lora_rank"]
    s, b = m["sequence"]["llm_tokens"], m["sequence"]["batch_size"]
    core, scores = 34 * s * b * h * scale, 5 * a * s * s * b * scale
    lora = lo["lora_targets"] * (2 * s * b * r + (3 * s * b * h if lo["lora_dropout"] > 0 else 0)) * scale
    if checkpointing:
        return {"llm_layer_inputs": L * 2 * s * b * h * scale, "llm_recomputed_layer": core + scores + lora}
    return {"llm_layers": L * (core + lora), "llm_attention_scores": L * scores}


def memory(m: dict, *, precision: str, strategy: str, world_size: int, checkpointing: bool, **_) -> dict:
    """Bytes per GPU (per rank), by kind; ``total`` sums them."""
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"trainer.strategy must be ddp or fsdp, got {strategy!r}")
    half = precision in ("bf16", "fp16", "bf16-mixed", "16-mixed")
    act_bytes = 2 if half else 4
    p = m["params"]
    frozen, trainable = p["total"] - p["trainable"], p["trainable"]
    shard = world_size if strategy == "fsdp" else 1
    out = {
        "weights_frozen": frozen * act_bytes / shard,
        "weights_trainable_fp32": trainable * 4 / shard,
        "gradients_fp32": trainable * 4 / shard,
        "adamw_state_fp32": trainable * 8 / shard,
    }
    if world_size > 1:  # FSDP: one layer gathered, one prefetched; DDP: bucket copies of the gradients
        key, val = (("fsdp_gathered_layers", 2 * m["llm"]["layer_params"] * act_bytes) if strategy == "fsdp"
                    else ("ddp_gradient_buckets", trainable * 4))  # (none with gradient_as_bucket_view=True)
        out[key] = val
    out.update(llm_activation_bytes(m, act_bytes=act_bytes, checkpointing=checkpointing))
    for key, part in (("image_tokenizer_activations", "image_tokenizer_saved"), ("text_encoder_activations", "text_encoder_saved")):
        out[key] = m[part]["float_elements"] * act_bytes + m[part]["other_bytes"]
    # peft's trainable token rows: each call builds the merged (V, H) matrix, its backward a dense (V, H) gradient
    out["token_rows_transients"] = 2 * m["llm"]["vocab_rows"] * m["llm"]["hidden"] * act_bytes
    out["cuda_context_workspace"] = CUDA_OVERHEAD_GIB * GIB
    out["total"] = sum(out.values())
    return out


def fits(total_bytes: float) -> bool:
    return total_bytes <= FIT_FRACTION * GPU_GIB * GIB


def advice(m: dict, s: dict) -> str:
    """The first change, in order of cost, that brings the per-GPU figure under the budget."""
    if fits(memory(m, **s)["total"]):
        return "fits"
    tries = [dict(s, checkpointing=True), dict(s, checkpointing=True, precision="bf16")]
    tries += [dict(s, checkpointing=True, precision="bf16", strategy="fsdp", world_size=n) for n in (2, 4, 8, 16, 32, 64)]
    for t in tries:
        if fits(memory(m, **t)["total"]):
            return (f"needs trainer.precision={t['precision']}, model.llm.gradient_checkpointing=true, "
                    f"trainer.strategy={t['strategy']}, trainer.world_size={t['world_size']}")
    return "does not fit even with FSDP over 64 GPUs: shorten the sequence (fewer classes per instruction) or the image"


def estimate(cfg: DictConfig, measured: dict | None = None) -> dict:
    """The planner's report (what tools/estimate.py writes to OUTPUT_DIR/estimate.json);
    ``measured``: a ``measure(cfg)`` result to reuse."""
    m = measured or measure(cfg)
    s = settings(cfg)
    mem = memory(m, **s)
    notes = list(m["notes"])
    if s["precision"] in ("bf16", "bf16-mixed") and "bfloat16" not in m["llm"]["dtype"] and m["params"]["total"] > 1e9:
        extra = (m["params"]["total"] - m["params"]["trainable"]) * 2 / GIB
        notes.append(f"model.llm.dtype={m['llm']['dtype']} loads the frozen base in that dtype: +{extra:.1f} GiB over this "
                     "figure; set model.llm.dtype=bfloat16")
    scores = llm_activation_bytes(m, act_bytes=2, checkpointing=False)["llm_attention_scores"] / m["llm"]["layers"]
    if scores > GIB / 4:  # per layer: with checkpointing one layer's worth is live at a time
        notes.append(f"attention scores are {scores / GIB:.2f} GiB per layer as materialized (eager attention); "
                     "a fused kernel (SDPA memory-efficient, which takes the 4-D group mask) keeps none of them")
    text_tasks = [t for t in ("caption", "vqa") if (OmegaConf.select(cfg, f"task.mixture.{t}", default=0) or 0) > 0]
    if text_tasks:
        notes.append(f"{'/'.join(text_tasks)} answers are not in the sequence above: a LLaVA conversation with its "
                     "answers can pass 1,000 tokens of its own")
    scenarios = {f"{s['precision']} {st} x{n} checkpointing={'on' if ck else 'off'}":
                 round(memory(m, **dict(s, strategy=st, world_size=n, checkpointing=ck))["total"] / GIB, 2)
                 for st, n in (("ddp", 1), ("fsdp", 8)) for ck in (True, False)}
    return {
        "params_total": m["params"]["total"],
        "params_trainable": m["params"]["trainable"],
        "params": m["params"]["components"],
        "params_trainable_by_component": m["params"]["trainable_components"],
        "settings": s,
        "sequence": m["sequence"],
        "est_memory_gib_per_gpu": round(mem["total"] / GIB, 2),
        "memory_gib": {k: round(v / GIB, 3) for k, v in mem.items()},
        "gpu_gib": GPU_GIB,
        "fits_one_gpu": fits(mem["total"]),
        "verdict": advice(m, s),
        "scenarios_gib": scenarios,
        "assumptions": {"llm_activations": "Korthikanti et al. 2022, 34*s*b*h + 5*a*s^2*b bytes per layer (16-bit)",
                        "image_tokenizer": "meta-device trace, fused-kernel stand-ins (deformable op, SDPA)",
                        "cuda_overhead_gib": CUDA_OVERHEAD_GIB, "fits_if_below_gib": FIT_FRACTION * GPU_GIB},
        "notes": notes,
    }
