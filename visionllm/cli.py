"""Command-line helpers shared by tools/*.py."""

from __future__ import annotations

import sys


def take_aside(key: str, argv: list[str] | None = None) -> str | None:
    """Remove ``key=VALUE`` from ``sys.argv`` before Hydra parses it, and return VALUE.

    Hydra's override grammar rejects unquoted ``{ } ( ) ,``, yet a VisionLLM instruction is
    exactly ``{'circle': <c0>} ... (c, x1, y1, x2, y2)``; a user types it in one pair of shell
    quotes and it must work as typed.
    """
    argv = sys.argv if argv is None else argv
    value = None
    for i in range(len(argv) - 1, 0, -1):
        arg = argv[i]
        for prefix in (f"{key}=", f"+{key}=", f"++{key}="):
            if arg.startswith(prefix):
                if value is None:
                    value = arg[len(prefix):]
                del argv[i]
                break
    return value


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
