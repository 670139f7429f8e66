"""Reconstruction losses on [0, 1] images: the autoencoders' unsupervised term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import nn

from fakedetect.losses.perceptual import LPIPSLoss
from fakedetect.utils.errors import is_int, is_number, require


class HybridLoss(nn.Module):
    """The autoencoder write-up's hybrid loss: alpha_r * L1 + beta * (1 - SSIM) + gamma_r * LPIPS.

    L1 keeps intensities right, SSIM (pytorch-msssim, Gaussian window) local structure and LPIPS what an
    ImageNet network perceives. gamma_r = 0 builds no LPIPS network, so needs no weights. Computed in float32
    whatever the autocast precision: 1 - SSIM of good reconstructions is small and bf16 would round it away.
    """

    def __init__(
        self,
        alpha_r: float = 0.84,
        beta: float = 0.15,
        gamma_r: float = 1.0,
        lpips_net: str = "alex",
        weights_path: str | None = None,
        ssim_window: int = 11,
    ) -> None:
        super().__init__()
        for key, weight in (("alpha_r", alpha_r), ("beta", beta), ("gamma_r", gamma_r)):
            require(f"model.reconstruction.{key}", weight, is_number(weight) and weight >= 0, "a number >= 0")
        require(
            "model.reconstruction.ssim_window",
            ssim_window,
            is_int(ssim_window) and ssim_window >= 3 and ssim_window % 2 == 1,
            "an odd integer >= 3 (the SSIM window in pixels)",
        )
        self.alpha_r, self.beta, self.gamma_r, self.ssim_window = alpha_r, beta, gamma_r, ssim_window
        self.lpips = LPIPSLoss(lpips_net, weights_path) if gamma_r > 0 else None

    def load_pretrained(self) -> None:
        if self.lpips is not None:
            self.lpips.load_pretrained()

    def components(self, reconstruction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms: l1, ssim (as 1 - SSIM) and, with gamma_r > 0, lpips."""
        with torch.autocast(reconstruction.device.type, enabled=False):
            x, y = reconstruction.float(), target.float()
            terms = {"l1": F.l1_loss(x, y), "ssim": 1 - ssim(x, y, data_range=1.0, win_size=self.ssim_window)}
            if self.lpips is not None:
                terms["lpips"] = self.lpips(x, y)
        return terms

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        terms = self.components(reconstruction, target)
        loss = self.alpha_r * terms["l1"] + self.beta * terms["ssim"]
        return loss + self.gamma_r * terms["lpips"] if "lpips" in terms else loss
