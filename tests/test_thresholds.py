"""The decision rule, Youden's J and best-F1 thresholds on hand-made scores, and how Detector chooses, applies and
stores them."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAccuracy, BinaryConfusionMatrix

from fakedetect.callbacks.figures import TestFigures
from fakedetect.losses import BCEWithLogits
from fakedetect.metrics.thresholds import SelectedThresholds, decide, f1_threshold, youden_threshold
from fakedetect.modules import Detector
from fakedetect.nets import MLP
from fakedetect.utils.errors import ConfigError

# 2 FAKE among 8 REAL. Calling the top k scores FAKE (prob > the (k+1)-th score):
#   k = 1 (t = 0.8): TP 1, FP 0 -> J = 1/2 - 0 = 0.500, F1 = 2/3 = 0.667   <- best F1
#   k = 5 (t = 0.5): TP 2, FP 3 -> J = 1 - 3/8 = 0.625, F1 = 4/7 = 0.571   <- best J
# every other k is worse on both (J: 0.375, 0.25, 0.125, 0.5, ...; F1: 0.5, 0.4, 0.333, 0.5, ...): Youden's J
# pays 1/8 per false alarm and gains 1/2 per fake found, F1 counts false alarms against 2 fakes only.
SCORES = np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
LABELS = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0])


def j_and_f1(scores: np.ndarray, labels: np.ndarray, t: float) -> tuple[float, float]:
    """Youden's J and F1 of the decisions `decide(scores, t)`."""
    pred, positive = decide(scores, t).numpy().astype(bool), labels == 1
    tp, fp, fn, tn = (
        int((pred & positive).sum()),
        int((pred & ~positive).sum()),
        int((~pred & positive).sum()),
        int((~pred & ~positive).sum()),
    )
    return tp / (tp + fn) - fp / (fp + tn), 2 * tp / (2 * tp + fp + fn)


def brute_force(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The best J and F1 over every possible decision (each score as a threshold, and 0)."""
    values = [j_and_f1(scores, labels, float(t)) for t in [0.0, *scores]]
    return max(v[0] for v in values), max(v[1] for v in values)


def test_decide_is_torchmetrics_rule_ties_and_float32_included() -> None:
    """A probability equal to the threshold is REAL, compared in float32 as BinaryAccuracy does: float32(0.1) is
    not above the Python float 0.1 there, though it is in float64."""
    probs, labels = torch.tensor([0.1, 0.3, 0.5, 0.7, 1.0, 0.0]), torch.tensor([1, 0, 1, 1, 1, 0])
    for t in (0.1, 0.3, 0.5, 0.7, 1.0, 0.0, 0.25):
        matrix = BinaryConfusionMatrix(threshold=t)(probs, labels)
        ours = decide(probs, t)
        assert int(((ours == 1) & (labels == 1)).sum()) == int(matrix[1, 1])
        assert int(((ours == 1) & (labels == 0)).sum()) == int(matrix[0, 1])
        assert float(BinaryAccuracy(threshold=t)(probs, labels)) == float((ours == labels).float().mean())
    assert decide(probs.double().numpy(), 0.1).tolist() == [0, 1, 1, 1, 1, 0]
    assert decide(np.array([0.5]), 0.5).tolist() == [0]


def test_youden_and_f1_differ_on_a_hand_made_set() -> None:
    assert youden_threshold(SCORES, LABELS) == pytest.approx(0.5)
    assert f1_threshold(SCORES, LABELS) == pytest.approx(0.8)
    # the fitted thresholds, applied by `decide`, reach the best of every possible decision
    assert brute_force(SCORES, LABELS) == pytest.approx((0.625, 2 / 3))
    assert j_and_f1(SCORES, LABELS, youden_threshold(SCORES, LABELS))[0] == pytest.approx(0.625)
    assert j_and_f1(SCORES, LABELS, f1_threshold(SCORES, LABELS))[1] == pytest.approx(2 / 3)
    # the same in any order, and from tensors
    order = np.random.default_rng(0).permutation(len(SCORES))
    assert youden_threshold(torch.tensor(SCORES[order]), torch.tensor(LABELS[order])) == pytest.approx(0.5)
    assert f1_threshold(torch.tensor(SCORES[order]), torch.tensor(LABELS[order])) == pytest.approx(0.8)


def test_fitted_thresholds_reach_the_best_decision_on_random_scores() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.integers(0, 2, 40)
        scores = np.round(rng.random(40) * 0.6 + 0.3 * labels, 2).astype(np.float32)  # ties included
        best_j, best_f1 = brute_force(scores, labels)
        assert j_and_f1(scores, labels, youden_threshold(scores, labels))[0] == pytest.approx(best_j)
        assert j_and_f1(scores, labels, f1_threshold(scores, labels))[1] == pytest.approx(best_f1)


def test_separable_scores_cut_just_below_the_lowest_fake() -> None:
    scores, labels = np.array([0.05, 0.2, 0.35, 0.4, 0.7, 0.75, 0.99]), np.array([0, 0, 0, 0, 1, 1, 1])
    assert youden_threshold(scores, labels) == pytest.approx(0.4)
    assert f1_threshold(scores, labels) == pytest.approx(0.4)
    assert decide(scores, 0.4).tolist() == labels.tolist()


def test_selected_thresholds_metric_gathers_batches() -> None:
    metric = SelectedThresholds()
    for part in np.array_split(np.arange(len(SCORES)), 3):
        metric.update(torch.tensor(SCORES[part]), torch.tensor(LABELS[part]))
    assert metric.compute().tolist() == pytest.approx([0.5, 0.8])
    metric.reset()
    metric.update(torch.tensor([0.1, 0.8]), torch.tensor([0, 1]))
    assert metric.compute().tolist() == pytest.approx([0.1, 0.1])


def detector(threshold: float | str) -> Detector:
    return Detector(
        MLP(hidden=[4], in_channels=1, resolution=2), BCEWithLogits(), partial(torch.optim.Adam), threshold=threshold
    )


def test_detector_threshold_choice_and_checkpoint_format() -> None:
    with pytest.raises(ValueError, match="'youden' or 'f1'"):
        detector("median")
    fixed = detector(0.3)
    assert fixed.decision_threshold == 0.3
    checkpoint: dict = {"state_dict": fixed.state_dict()}  # as Lightning hands it over
    fixed.on_save_checkpoint(checkpoint)
    assert checkpoint["thresholds"] == {"0.3": 0.3, "youden": None, "f1": None, "selected": "0.3", "value": 0.3}

    youden = detector("youden")
    with pytest.raises(ConfigError, match="no validation has run"):
        youden.decision_threshold  # noqa: B018 - the property raises
    youden.val_thresholds.copy_(torch.tensor([0.6, 0.9]))
    assert youden.decision_threshold == pytest.approx(0.6)
    youden.on_save_checkpoint(checkpoint)
    assert checkpoint["thresholds"] == pytest.approx(
        {"0.5": 0.5, "youden": 0.6, "f1": 0.9, "selected": "youden", "value": 0.6}
    )
    # the buffer is in the state dict, so a module rebuilt from a checkpoint has the same threshold
    f1 = detector("f1")
    f1.load_state_dict(youden.state_dict())
    assert f1.decision_threshold == pytest.approx(0.9)


def test_test_metrics_use_the_chosen_threshold() -> None:
    model = detector("f1")
    model.val_thresholds.copy_(torch.tensor([0.6, 0.9]))
    model.on_test_start()
    assert all(m.threshold == pytest.approx(0.9) for name, m in model.test_metrics.items() if "auroc" not in name)
    # the confusion-matrix figure (a reporting callback) counts at the same threshold
    figures = TestFigures()
    figures.on_test_start(None, model)  # type: ignore[arg-type]
    assert figures.confusion.threshold == pytest.approx(0.9)
    model.test_metrics.update(torch.tensor([0.95, 0.85, 0.3, 0.2]), torch.tensor([1, 0, 1, 0]))
    # at 0.9 only the first is called FAKE: 3 of 4 right (at 0.5, 2 of 4)
    assert float(model.test_metrics.compute()["test/acc"]) == pytest.approx(0.75)
    assert model.train_acc.threshold == 0.5 and model.val_metrics["acc"].threshold == 0.5


def test_checkpoint_without_thresholds_loads_with_none_chosen() -> None:
    old = {"state_dict": {k: v for k, v in detector(0.5).state_dict().items() if k != "val_thresholds"}}
    model = detector("youden")
    model.on_load_checkpoint(old)
    model.load_state_dict(old["state_dict"])
    assert all(math.isnan(t) for t in model.val_thresholds.tolist())
