"""Hungarian matching (DETR, Carion et al. 2020, §3.1) between predictions and ground truth,
with ``scipy.optimize.linear_sum_assignment``. Used twice (METHOD.md §3, §5): image tokens to
object centres for the tokenizer loss, and LLM query groups to objects for the answer loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


@torch.no_grad()
def hungarian(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cost (M predictions, n targets) -> (pred_idx, tgt_idx), min(M, n) pairs, lowest total cost."""
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty
    c = cost.detach().float().cpu()
    if not torch.isfinite(c).all():
        c = torch.nan_to_num(c, nan=1e6, posinf=1e6, neginf=-1e6)
    rows, cols = linear_sum_assignment(c.numpy())
    as_t = lambda x: torch.as_tensor(x, dtype=torch.long, device=cost.device)
    return as_t(rows), as_t(cols)


def focal_cost(logits: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Matching cost of calling each prediction an object, as Deformable DETR: (M,) logits -> (M,)."""
    p = logits.sigmoid()
    pos = alpha * (1 - p) ** gamma * -F.logsigmoid(logits)
    neg = (1 - alpha) * p**gamma * -F.logsigmoid(-logits)
    return pos - neg
