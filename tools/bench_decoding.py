"""Output-format-as-query against token-by-token decoding (METHOD.md §5), side by side.

Decodes the same detection answer (M groups x 5 slots, the same model and prefix) in one pass
and token by token with a KV cache, checks both give the same tokens, and prints the ratio. The
one pass is timed twice: with its attention computed by blocks (``grouped_attention``, the
default) and with the full (T, T) mask, at inference and for a training step (forward and
backward); ``--points N`` asks for N-point polygons (2N + 1 slots a group) instead of boxes:

    python tools/bench_decoding.py [--groups 100] [--layers 4] [--hidden 256] [--points 2] [--batch 1] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from visionllm.modeling.decoding import decode_groups, decode_groups_stepwise, splice_image_tokens
from visionllm.modeling.llm import LLM
from visionllm.tasks import detection
from visionllm.text_tokenizer import load_tokenizer, train_text_tokenizer
from visionllm.vocab import LOC_HALF


def read_tokens(llm, hidden: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(1, G, S, H) -> (G, S) answer token ids: class-or-none for slot 0, location for the rest."""
    v = llm.vocab
    cls_ids = torch.tensor([v.class_id(k) for k in range(num_classes)] + [v.none])
    loc_ids = torch.arange(v.loc0, v.loc0 + 2 * LOC_HALF + 1)
    cls = cls_ids[llm.logits(hidden[0, :, 0], cls_ids).argmax(-1)]
    loc = loc_ids[llm.logits(hidden[0, :, 1:], loc_ids).argmax(-1)]
    return torch.cat([cls[:, None], loc], 1)


def timeit(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--points", type=int, default=2, help="points an answer: 2 a box, N > 2 a polygon")
    ap.add_argument("--batch", type=int, default=1, help="samples in the timed training step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = ["circle", "square", "triangle", "star", "hexagon", "ellipse"]
    with tempfile.TemporaryDirectory() as tmp:
        train_text_tokenizer([detection.make_instruction(classes, template=t) for t in detection.TEMPLATES], tmp, vocab_size=600)
        tok = load_tokenizer(tmp)
    llm = LLM(tokenizer=tok, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 64,
              intermediate_size=args.hidden * 8 // 3, lora_rank=16).eval()
    G = args.groups
    image_tokens = torch.randn(1, G, args.hidden) * 0.02
    instruction = detection.make_instruction(classes, template=detection.TEMPLATES[0])
    slots = llm.vocab.slot_ids(args.points)
    with torch.no_grad():
        prefix, valid, _ = splice_image_tokens(llm, [instruction], image_tokens)
        one = lambda: decode_groups(llm, prefix, valid, image_tokens, slots)[0]
        dense = lambda: decode_groups(llm, prefix, valid, image_tokens, slots, dense=True)[0]
        step = lambda: decode_groups_stepwise(llm, prefix, image_tokens, slots)
        one()  # warm-up
        t_one, h_one = timeit(one, args.reps)
        t_dense, h_dense = timeit(dense, args.reps)
        t_step, h_step = timeit(step, max(1, args.reps // 2))
        tok_one, tok_step = read_tokens(llm, h_one, len(classes)), read_tokens(llm, h_step, len(classes))
    same = torch.equal(tok_one, tok_step) and torch.equal(tok_one, read_tokens(llm, h_dense, len(classes)))
    # a training step's share: forward and backward of the one pass, by blocks and dense
    llm.train()
    B = args.batch
    prefix_b, valid_b = prefix.expand(B, -1, -1).detach(), valid.expand(B, -1)
    tokens_b = image_tokens.expand(B, -1, -1).clone().requires_grad_(True)

    def train_step(dense: bool):
        def run():
            hidden, _ = decode_groups(llm, prefix_b, valid_b, tokens_b, slots, dense=dense)
            hidden.pow(2).mean().backward()
        return run
    train_step(False)()  # warm-up
    t_train_one, _ = timeit(train_step(False), args.reps)
    t_train_dense, _ = timeit(train_step(True), args.reps)
    n_tok = G * len(slots)
    print(f"LLM {args.layers} layers x {args.hidden}, prefix {prefix.shape[1]} tokens, {G} groups x {len(slots)} slots = {n_tok} answer tokens")
    print(f"one pass:            {t_one * 1000:8.1f} ms (with the dense mask: {t_dense * 1000:.1f} ms, "
          f"{t_dense / t_one:.2f}x)")
    print(f"token by token (KV): {t_step * 1000:8.1f} ms")
    print(f"training step, {B} sample(s), forward + backward: by blocks {t_train_one * 1000:.1f} ms, dense mask "
          f"{t_train_dense * 1000:.1f} ms: {t_train_dense / t_train_one:.2f}x")
    print(f"max |hidden diff|:   {(h_one - h_step).abs().max().item():.2e}")
    print(f"same tokens:         {same} ({(tok_one == tok_step).float().mean().item() * 100:.1f}% of {n_tok})")
    print(f"speedup: {t_step / t_one:.1f}x")
    if not same:
        raise SystemExit("the two decoders disagree")


if __name__ == "__main__":
    main()
