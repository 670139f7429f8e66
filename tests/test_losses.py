"""Classification and reconstruction losses, the AE loss schedule, and LPIPS against published values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fakedetect.losses import BCEWithLogits, FocalLoss, HybridLoss, LossSchedule, LPIPSLoss, LPIPSWeightsError
from tests.conftest import SHARED_DIR, WEIGHTS_DIR, needs

WEIGHTS = WEIGHTS_DIR / "alexnet_features_imagenet.pth"
REFERENCE = SHARED_DIR / "data" / "lpips-reference"
# LPIPS (alex, v0.1) published by IQA-PyTorch for the five reference pairs (README of lpips-reference)
PUBLISHED_LPIPS = {"I03": 0.7237, "I04": 0.2572, "I06": 0.05079, "I08": 0.05205, "I19": 0.4253}


@pytest.fixture(scope="module")
def lpips_alex() -> LPIPSLoss:
    needs(WEIGHTS)
    loss = LPIPSLoss("alex", str(WEIGHTS))
    loss.load_pretrained()
    return loss


def batch(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, generator=g), torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_focal_is_bce_at_gamma_0_without_alpha(pos_weight: float | None) -> None:
    logits, labels = batch()
    focal = FocalLoss(alpha=None, gamma=0.0, pos_weight=pos_weight)(logits, labels)
    assert focal == pytest.approx(float(BCEWithLogits(pos_weight=pos_weight)(logits, labels)), rel=1e-6)


def test_focal_weighs_hard_images_and_classes() -> None:
    easy, hard = torch.tensor([4.0]), torch.tensor([-1.0])
    fake = torch.tensor([1])
    bce = BCEWithLogits()
    focal = FocalLoss(alpha=None, gamma=2.0)
    # an easy FAKE (p = 0.98) keeps (1 - p)^2 = 3e-4 of its BCE, a hard one (p = 0.27) 53%
    assert focal(easy, fake) / bce(easy, fake) < 1e-3
    assert focal(hard, fake) / bce(hard, fake) == pytest.approx((1 - torch.sigmoid(hard).item()) ** 2, rel=1e-5)
    # alpha weighs FAKE terms by alpha and REAL terms by 1 - alpha
    assert FocalLoss(alpha=0.8, gamma=2.0)(hard, fake) == pytest.approx(0.8 * float(focal(hard, fake)), rel=1e-6)
    assert FocalLoss(alpha=0.8, gamma=2.0)(hard, 1 - fake) == pytest.approx(
        0.2 * float(focal(hard, 1 - fake)), rel=1e-6
    )
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)


def test_smoothed_bce_targets() -> None:
    eps = 0.2
    loss = BCEWithLogits(label_smoothing=eps)
    # the smoothed loss is minimal where sigmoid(logit) = 1 - eps/2 for FAKE and eps/2 for REAL
    target_logit = torch.logit(torch.tensor(1 - eps / 2))
    logits = torch.stack([target_logit, -target_logit]).requires_grad_(True)
    loss(logits, torch.tensor([1, 0])).backward()
    assert logits.grad.abs().max() < 1e-6
    # and it is larger than plain BCE on confident correct predictions
    confident, labels = torch.tensor([8.0, -8.0]), torch.tensor([1, 0])
    assert loss(confident, labels) > BCEWithLogits()(confident, labels) + 0.5
    assert BCEWithLogits(label_smoothing=0.0)(confident, labels) == BCEWithLogits()(confident, labels)
    with pytest.raises(ValueError, match="label_smoothing"):
        BCEWithLogits(label_smoothing=1.0)


def test_hybrid_is_the_weighted_sum_of_its_components(lpips_alex: LPIPSLoss) -> None:
    g = torch.Generator().manual_seed(0)
    target = F.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=32, mode="bilinear")
    noisy = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    hybrid = HybridLoss(alpha_r=0.82, beta=0.235, gamma_r=1.46, weights_path=str(WEIGHTS))
    hybrid.load_pretrained()
    terms = hybrid.components(noisy, target)
    assert set(terms) == {"l1", "ssim", "lpips"} and all(0 < float(t) < 1 for t in terms.values())
    assert terms["l1"] == pytest.approx(float((noisy - target).abs().mean()), rel=1e-6)
    assert terms["lpips"] == pytest.approx(float(lpips_alex(noisy, target)), rel=1e-5)
    expected = 0.82 * terms["l1"] + 0.235 * terms["ssim"] + 1.46 * terms["lpips"]
    assert hybrid(noisy, target) == pytest.approx(float(expected), rel=1e-6)
    assert all(float(t) == pytest.approx(0, abs=1e-5) for t in hybrid.components(target, target).values())
    # more noise, larger loss: the terms measure reconstruction error
    noisier = (target + 0.3 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    assert hybrid(noisier, target) > hybrid(noisy, target)


def test_hybrid_without_lpips_needs_no_weights_and_takes_greyscale() -> None:
    hybrid = HybridLoss(alpha_r=1.0, beta=0.5, gamma_r=0.0, weights_path="/nowhere.pth")
    assert hybrid.lpips is None
    hybrid.load_pretrained()  # nothing to load
    x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert set(hybrid.components(x, y)) == {"l1", "ssim"}
    assert float(hybrid(x, y)) > 0


def test_lpips_takes_greyscale_and_stays_a_fixed_measure(lpips_alex: LPIPSLoss) -> None:
    grey = torch.rand(2, 1, 32, 32)
    other = torch.rand(2, 1, 32, 32, requires_grad=True)
    assert float(lpips_alex(grey, grey)) == pytest.approx(0, abs=1e-6)
    assert float(lpips_alex(grey, other)) == pytest.approx(
        float(lpips_alex(grey.repeat(1, 3, 1, 1), other.repeat(1, 3, 1, 1)))
    )
    lpips_alex(grey, other).backward()  # a loss: gradients reach the images, never the network
    assert other.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips_alex.parameters())
    lpips_alex.train()
    assert not lpips_alex.model.training  # its dropout stays off when the module trains


def test_lpips_alex_reproduces_the_published_values(lpips_alex: LPIPSLoss) -> None:
    needs(REFERENCE)

    def load(path: Path) -> torch.Tensor:
        return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255

    with torch.no_grad():
        ours = {
            n: float(lpips_alex(load(REFERENCE / "dist" / f"{n}.png"), load(REFERENCE / "ref" / f"{n}.png")))
            for n in PUBLISHED_LPIPS
        }
    for name, published in PUBLISHED_LPIPS.items():
        assert round(ours[name], 3) == round(published, 3), (name, ours[name], published)
        assert ours[name] == pytest.approx(published, abs=5e-4)


def test_lpips_weights_missing_or_never_loaded_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "alexnet_features_imagenet.pth"
    loss = LPIPSLoss("alex", str(missing))
    with pytest.raises(LPIPSWeightsError, match=f"not found at {missing}"):
        loss.load_pretrained()
    with pytest.raises(LPIPSWeightsError, match="never loaded"):
        loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, missing)
    with pytest.raises(LPIPSWeightsError, match="lacks"):
        loss.load_pretrained()
    with pytest.raises(ValueError, match="LPIPS net"):
        LPIPSLoss("squeeze")


def test_lpips_trunk_travels_in_the_state_dict(lpips_alex: LPIPSLoss) -> None:
    """A trained checkpoint carries the trunk: a fresh loss loaded from it needs no weights file."""
    fresh = LPIPSLoss("alex", "/nowhere.pth")
    fresh.load_state_dict(lpips_alex.state_dict())
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert float(fresh(x, y)) == pytest.approx(float(lpips_alex(x, y)))


def test_loss_schedule_freezes_then_ramps_classification() -> None:
    schedule = LossSchedule(r_weight=2.0, c_weight=0.5, freeze=0.1, ramp=0.2)
    expected = {0.0: 0.0, 0.05: 0.0, 0.1: 0.0, 0.2: 0.25, 0.3: 0.5, 0.9: 0.5, 1.0: 0.5}
    for progress, c_weight in expected.items():
        assert schedule(progress) == (2.0, pytest.approx(c_weight)), progress
    assert LossSchedule(freeze=0.1)(0.1) == (1.0, 1.0)  # no ramp: on at once after the freeze
    assert LossSchedule(freeze=0.0)(0.0) == (1.0, 1.0)
    with pytest.raises(ValueError, match="freeze"):
        LossSchedule(freeze=0.5, ramp=0.6)
