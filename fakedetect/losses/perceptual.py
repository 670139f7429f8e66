"""LPIPS (Zhang et al., 2018) as a loss: the `lpips` package, with ImageNet trunk weights that are never random."""

from __future__ import annotations

import warnings
from pathlib import Path

import lpips
import torch
import torchvision
from torch import nn

from fakedetect.utils.errors import ConfigError, require

TRUNKS = {
    "alex": (torchvision.models.alexnet, torchvision.models.AlexNet_Weights.IMAGENET1K_V1),
    "vgg": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
}


class LPIPSWeightsError(ConfigError):
    """The LPIPS trunk's ImageNet weights cannot be had: a loss with a random trunk would mean nothing."""


class LPIPSLoss(nn.Module):
    """Mean LPIPS distance between two batches of [0, 1] images (a greyscale channel is repeated to 3).

    The calibrated linear layers ship inside the `lpips` package. The ImageNet trunk (AlexNet or VGG16 conv
    layers) is loaded by `load_pretrained()` from `weights_path` (torchvision `features.*` keys, e.g.
    ../shared/weights/alexnet_features_imagenet.pth), or from torchvision's cache or download when that is
    None; until then `forward` raises. It is not loaded by the constructor because the trunk is part of the
    state dict: a trained checkpoint carries it, so eval and predict need no weights file.
    """

    trunk_loaded: torch.Tensor  # a buffer

    def __init__(self, net: str = "alex", weights_path: str | None = None) -> None:
        super().__init__()
        require("model.reconstruction.lpips_net", net, net in TRUNKS, f"one of {sorted(TRUNKS)} (the LPIPS net)")
        self.net, self.weights_path = net, weights_path
        with warnings.catch_warnings():  # lpips builds its trunk with torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        self.model.requires_grad_(False)
        self.register_buffer("trunk_loaded", torch.tensor(False))
        self._checked = False

    def load_pretrained(self) -> None:
        """Load the ImageNet conv weights into lpips' slices, strictly (every trunk layer must be covered)."""
        state = self._imagenet_features()
        # lpips keeps torchvision's layer numbers inside its slices: slice2.3.weight is features.3.weight
        mapped, missing = {}, []
        for slice_name, block in self.model.net.named_children():
            for key in block.state_dict():
                source = f"features.{key}"
                if source in state:
                    mapped[f"{slice_name}.{key}"] = state[source]
                else:
                    missing.append(source)
        if missing:
            raise LPIPSWeightsError(
                f"{self.weights_path or 'torchvision weights'} lacks {missing[:3]} for the LPIPS {self.net} trunk"
            )
        self.model.net.load_state_dict(mapped, strict=True)
        self.trunk_loaded.fill_(True)

    def _imagenet_features(self) -> dict[str, torch.Tensor]:
        if self.weights_path:
            path = Path(self.weights_path)
            if not path.is_file():
                raise LPIPSWeightsError(
                    f"LPIPS {self.net} trunk weights not found at {path}: set the reconstruction loss's weights_path "
                    f"(or $FAKEDETECT_WEIGHTS to the folder holding it; see ../shared/weights/README.md)"
                )
            return torch.load(path, map_location="cpu", weights_only=True)
        build, weights = TRUNKS[self.net]
        try:
            return build(weights=weights).state_dict()
        except Exception as err:  # noqa: BLE001 - offline, no cache: all mean the same to the user
            raise LPIPSWeightsError(
                f"no ImageNet weights for the LPIPS {self.net} trunk: not in torchvision's cache and the download "
                f"failed ({type(err).__name__}); pass a local file as weights_path"
            ) from None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self._checked:
            if not bool(self.trunk_loaded):
                raise LPIPSWeightsError(
                    "the LPIPS trunk weights were never loaded: call load_pretrained() first "
                    "(AutoencoderDetector does when fitting starts)"
                )
            self._checked = True
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.model(x, y, normalize=True).mean()

    def train(self, mode: bool = True) -> LPIPSLoss:
        """LPIPS stays in eval mode: it is a fixed measure here, and its linear layers have dropout."""
        super().train(mode)
        self.model.eval()
        return self
