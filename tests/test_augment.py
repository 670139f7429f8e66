"""The downscale-then-upscale training augmentation: the robustness test's operation, drawn per image."""

from __future__ import annotations

import torch

from fakedetect.data.augment import BatchAugment, random_resize
from fakedetect.data.degrade import resize
from tests.synthetic import smooth_images


def test_random_resize_is_the_robustness_resize_on_the_chosen_share() -> None:
    torch.manual_seed(0)
    x = smooth_images(400, detail=16)  # detail above 8 px: a round trip through 8 px loses some
    out = random_resize(x.float() / 255, 1.0, (0.25, 0.25))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert (out * 255 - resize(x, 0.25).float()).abs().max() <= 1, "training and testing see the same operation"
    out = BatchAugment(resize_prob=0.5, resize_scale=(0.25, 0.75))(x.float() / 255)
    changed = (out * 255 - x.float()).abs().flatten(1).amax(1) > 2
    assert 0.4 < changed.float().mean() < 0.6
    assert torch.equal(random_resize(x.float(), 0.0, (0.25, 1.0)), x.float()), "probability 0 leaves images alone"
