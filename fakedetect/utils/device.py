"""The device a command runs on, shared by the commands that score outside a Lightning trainer."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; any other value is torch's own device name."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
