"""Classification losses on one logit per image and integer labels (FAKE = 1); reconstruction losses on
[0, 1] images for the autoencoders, and the schedule that weighs the two."""

from fakedetect.losses.bce import BCEWithLogits
from fakedetect.losses.focal import FocalLoss
from fakedetect.losses.perceptual import LPIPSLoss, LPIPSWeightsError
from fakedetect.losses.reconstruction import HybridLoss
from fakedetect.losses.schedule import LossSchedule

__all__ = ["BCEWithLogits", "FocalLoss", "HybridLoss", "LPIPSLoss", "LPIPSWeightsError", "LossSchedule"]
