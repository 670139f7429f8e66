"""Any timm architecture as a one-logit detector, ImageNet-pretrained or from scratch (ResNet-18 included)."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import timm
import torch
from timm.models import adapt_input_conv, group_modules, group_parameters, load_state_dict
from timm.utils import freeze as freeze_modules
from torch import nn

from fakedetect.nets.base import DetectorNet
from fakedetect.utils.errors import ConfigError

log = logging.getLogger(__name__)

# HF_HUB_OFFLINE values (unset included) that keep timm to its cache
HUB_OFFLINE = {"1", "ON", "YES", "TRUE"}


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline flag set for the calls inside only (timm passes no offline argument to the hub),
    and restored after."""
    saved = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = saved


class PretrainedWeightsError(ConfigError):
    """Pretrained weights were asked for and cannot be had: the run stops rather than start from random ones."""


class Backbone(DetectorNet):
    """A timm model (`name`, e.g. `resnet18.tv_in1k`) whose classifier is replaced by one logit.

    - `pretrained` weights come from `weights_path` if given, else from timm's cache, or a download when
      `HF_HUB_OFFLINE=0` is set (off by default: with no network the hub retries for ~50 s). They are
      fetched by `load_pretrained()`, which Detector calls when fitting starts, not by the constructor: a net
      rebuilt from a trained checkpoint (eval, predict, Grad-CAM) must not need the ImageNet file.
    - `cifar_stem` gives the first conv stride 1 and drops a stem max-pool, so 32 px images are not
      shrunk 4x before the first stage; the kernel is kept, so pretrained stem weights still fit.
    - Stages are timm's own parameter groups (`group_matcher(coarse=True)`: stem, then blocks); its last
      group is the head. `trainable_stages=k` freezes all but the last k stages (`freeze` = 0), with
      frozen BatchNorms turned into FrozenBatchNorm2d so their statistics stay fixed too.
    - `backbone_lr_scale` multiplies the optimizer's learning rate for everything but the head.
    """

    # timm's create_model is typed as returning a bare nn.Module; what this class calls (reset_classifier,
    # group_matcher, pretrained_cfg, feature_info, forward_features, forward_head) is the interface every timm
    # architecture has without a common base class to name it
    model: Any

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights_path: str | None = None,
        cifar_stem: bool = False,
        freeze: bool = False,
        trainable_stages: int | None = None,
        backbone_lr_scale: float = 1.0,
        drop_rate: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if freeze and trainable_stages:
            raise ValueError(f"freeze=true leaves no stage trainable; got trainable_stages={trainable_stages}")
        if ":" not in name and not timm.is_model(name):  # "hf-hub:..." names a hub model, which timm fetches
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "timm.list_models() lists them"
            raise ValueError(f"name={name!r} is not a timm architecture; {hint}")
        self.name, self.pretrained, self.weights_path = name, pretrained, weights_path
        self.in_channels, self.backbone_lr_scale = in_channels, backbone_lr_scale
        self.model = timm.create_model(name, pretrained=False, num_classes=1, in_chans=in_channels, drop_rate=drop_rate)
        # A fresh head with PyTorch's default init: timm's EfficientNet init sizes it for 1000 classes, which
        # for one output means weights up to +-1 and initial logits in the tens.
        self.model.reset_classifier(1)
        if cifar_stem:
            self.model.get_submodule(self.model.pretrained_cfg["first_conv"]).stride = (1, 1)
            if isinstance(getattr(self.model, "maxpool", None), nn.MaxPool2d):
                self.model.maxpool = nn.Identity()
        *stages, _head = group_modules(self.model, self.model.group_matcher(coarse=True)).values()
        trainable = 0 if freeze else trainable_stages
        if trainable is not None:
            if not 0 <= trainable <= len(stages):
                raise ValueError(f"trainable_stages must be 0..{len(stages)} for {name}, got {trainable}")
            frozen = [m for stage in stages[: len(stages) - trainable] for m in stage]
            if frozen:  # timm's freeze of an empty list would freeze the whole model
                freeze_modules(self.model, frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).squeeze(1)

    def param_groups(self) -> list[dict]:
        """Trainable parameters as optimizer groups with an `lr_scale`: the backbone's, then the head's."""
        *_, head_names = group_parameters(self.model, self.model.group_matcher(coarse=True)).values()
        head = set(head_names)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n not in head], "lr_scale": self.backbone_lr_scale},
            {"params": [p for n, p in named if n in head], "lr_scale": 1.0},
        ]
        return [g for g in groups if g["params"]]

    def cam_layers(self) -> list[nn.Module]:
        """The feature stages timm names (ResNet's layer1..layer4), shallow to deep: where Grad-CAM may look."""
        return [self.model.get_submodule(info["module"]) for info in self.model.feature_info]

    def load_pretrained(self) -> None:
        """Load ImageNet weights into everything but the head, strictly; a no-op unless `pretrained`."""
        if not self.pretrained:
            return
        cfg, source = self.model.pretrained_cfg, self.weights_path or "timm's cache"
        head = {f"{cfg['classifier']}.weight", f"{cfg['classifier']}.bias"}
        state = {k: v for k, v in self._imagenet_state().items() if k not in head}
        conv = f"{cfg['first_conv']}.weight"
        if self.in_channels != 3 and conv in state:
            state[conv] = adapt_input_conv(self.in_channels, state[conv])
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # tensors of other shapes
            detail = str(err).strip().splitlines()[-1].strip()
            raise PretrainedWeightsError(f"{source} does not fit {self.name}: {detail}") from None
        if set(missing) - head or unexpected:
            raise PretrainedWeightsError(
                f"{source} does not fit {self.name}: missing "
                f"{sorted(set(missing) - head)[:3]}, unexpected {unexpected[:3]}"
            )
        log.info("loaded ImageNet weights for %s from %s", self.name, source)

    def _imagenet_state(self) -> dict[str, torch.Tensor]:
        """The ImageNet state dict: the explicit file, else timm's cache or download; never random weights."""
        if self.weights_path:
            if not Path(self.weights_path).is_file():
                raise PretrainedWeightsError(f"model.net.weights_path={self.weights_path} is not a file")
            return load_state_dict(self.weights_path)
        try:
            with hub_offline(os.environ.get("HF_HUB_OFFLINE", "1").upper() in HUB_OFFLINE):
                return timm.create_model(self.name, pretrained=True).state_dict()
        except Exception as err:  # noqa: BLE001 - offline, no cache, no such weights: all mean the same to the user
            raise PretrainedWeightsError(
                f"no pretrained weights for {self.name}: not in timm's cache and not downloaded "
                f"({type(err).__name__}; HF_HUB_OFFLINE=0 allows a download); pass a local file with "
                f"model.net.weights_path=/path/to/file.pth or train from scratch with model.net.pretrained=false"
            ) from None
