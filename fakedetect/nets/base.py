"""What Detector and Grad-CAM may ask of a net beyond `forward`, with defaults for nets that need nothing more."""

from __future__ import annotations

from torch import nn


class DetectorNet(nn.Module):
    """Base of every net: `forward` maps (N, C, H, W) float images to N logits (FAKE positive).

    - `param_groups()`: optimizer groups, each with an `lr_scale` (a backbone trained slower than its head).
    - `load_pretrained()`: initial weights fetched when a fit starts from scratch, never when a trained net is
      rebuilt from a checkpoint.
    - `cam_layers()`: layers that `forward` runs, shallow to deep, where Grad-CAM may look; none for a net
      without spatial feature maps.
    """

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def load_pretrained(self) -> None:
        """Nothing to load: the net starts from its own initialization."""

    def cam_layers(self) -> list[nn.Module]:
        return []
