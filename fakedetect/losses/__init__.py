"""Classification losses on one logit per image and integer labels (FAKE = 1)."""

from fakedetect.losses.bce import BCEWithLogits

__all__ = ["BCEWithLogits"]
