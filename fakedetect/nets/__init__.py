"""Plain nn.Modules that map (N, C, H, W) float images to one logit per image; FAKE is the positive class."""

from fakedetect.nets.autoencoder import ConvAutoencoder, TransferAutoencoder
from fakedetect.nets.backbone import Backbone, PretrainedWeightsError
from fakedetect.nets.base import DetectorNet
from fakedetect.nets.cnn import FlexibleCNN
from fakedetect.nets.mlp import MLP

__all__ = [
    "MLP",
    "Backbone",
    "ConvAutoencoder",
    "DetectorNet",
    "FlexibleCNN",
    "PretrainedWeightsError",
    "TransferAutoencoder",
]
