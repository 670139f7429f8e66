"""The top-of-CIFAKE tools: flip test-time augmentation, the EMA of weights, and the recipes' configs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from fakedetect.callbacks.ema import EMA, warmup_ema
from fakedetect.eval import evaluate
from fakedetect.modules import Detector
from fakedetect.nets.base import DetectorNet
from fakedetect.train import train
from fakedetect.utils.checkpoint import Trained, load_checkpoint, load_trained
from fakedetect.utils.errors import ConfigError
from tests.conftest import (
    assert_one_line,
    compose_config,
    evaluate_run,
    metrics_json,
    predicted,
    run_command,
    subset_train_config,
)


class LeftMinusRight(DetectorNet):
    """A net blind to mirror symmetry by construction: its logit is the left half's mean minus the right half's,
    so an image and its mirror get opposite logits."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(5.0))

    def forward(self, x: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        return self.scale * (x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3)))


def trick_detector(tta: str | None) -> Detector:
    detector = Detector(LeftMinusRight(), nn.BCEWithLogitsLoss(), partial(torch.optim.SGD, lr=0.1), tta=tta)
    detector.set_statistics([0.0] * 3, [1.0] * 3)  # images as they are
    return detector


def test_flip_tta_averages_an_image_with_its_mirror() -> None:
    """Mirrored logits are opposite, so flip TTA gives exactly 0.5 for every image, while each image alone is
    scored away from 0.5; a mirror-symmetric image gets the same score with and without TTA. The predict step
    and the test step both go through it, and eval/predict's `tta=` switches it on a trained one."""
    x = torch.rand(6, 3, 8, 8)
    x[:, :, :, :4] += torch.linspace(0.5, 1, 6).view(6, 1, 1, 1)  # brighter left halves, differently per image
    plain, flipped = trick_detector(None), trick_detector("flip")
    assert (plain.predict_step((x,)) - 0.5).abs().min() > 0.01
    assert torch.allclose(flipped.predict_step((x,)), torch.full((6,), 0.5), atol=1e-6)
    symmetric = torch.cat([x[..., :4], x[..., :4].flip(-1)], dim=-1)
    assert torch.allclose(plain.predict_step((symmetric,)), flipped.predict_step((symmetric,)))
    probs, _ = predicted(flipped, [(x, torch.zeros(6))])
    assert torch.allclose(probs, torch.full((6,), 0.5), atol=1e-6)
    trained = Trained(plain, datamodule=None, config=OmegaConf.create(), global_step=0)  # type: ignore[arg-type]
    trained.choose_tta("checkpoint")
    assert plain.tta is None
    trained.choose_tta("flip")
    assert torch.allclose(plain.predict_step((x,)), torch.full((6,), 0.5), atol=1e-6)
    with pytest.raises(ConfigError, match=r"tta='rotate' \(model.tta, or tta= of eval and predict\): use flip"):
        trained.choose_tta("rotate")


@pytest.mark.parametrize("bad", ["median", None, float("nan")])
def test_bad_threshold_is_a_config_error_naming_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^model.threshold must be a number, or 'youden' or 'f1' .*, got "):
        Detector(LeftMinusRight(), nn.BCEWithLogitsLoss(), partial(torch.optim.SGD, lr=0.1), threshold=bad)


def test_ema_decay_checks_and_warmup() -> None:
    """The warm-up follows min(decay, (1 + n) / (10 + n)); a decay outside (0, 1) is one ConfigError."""
    update = warmup_ema(0.99)
    average, current = torch.zeros(3), torch.ones(3)
    assert torch.allclose(update(average, current, torch.tensor(0)), torch.full((3,), 0.9))  # rate 1/10
    assert torch.allclose(update(average, current, torch.tensor(10_000)), torch.full((3,), 0.01))  # rate 0.99
    for bad in (0, 1, 1.5, True):
        with pytest.raises(ConfigError, match="callbacks.ema.decay="):
            EMA(decay=bad)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory, cifake_path: Path, cache_dir: Path) -> Path:
    """A tiny real run with `callbacks=ema` (fast decay, so the average differs from the last weights), Youden's
    threshold and flip TTA, on the shared CIFAKE subset."""
    run = tmp_path_factory.mktemp("outputs") / "train" / "runs" / "ema"
    cfg = subset_train_config(
        cifake_path,
        cache_dir,
        run,
        "experiment=cnn_baseline",
        "callbacks=ema",
        "callbacks.ema.decay=0.9",
        "model.threshold=youden",
        "model.tta=flip",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=8",
    )
    train(cfg)
    return run


def test_ema_weights_are_validated_checkpointed_and_tested(ema_run: Path) -> None:
    """The checkpoint's state dict is the average (its current weights kept apart, for resuming), loads through
    `load_trained`, scores the validation split to the logged val/acc (so the average is what was validated),
    carries the Youden threshold recorded beside it, and eval of it reproduces train's test metrics."""
    record = metrics_json(ema_run)
    ckpt = record["ckpt_path"]
    checkpoint = load_checkpoint(ckpt)
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == current.keys()
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged if k.endswith("weight"))
    trained = load_trained(ckpt)
    assert trained.model.tta == "flip"
    assert trained.model.thresholds()["youden"] == checkpoint["thresholds"]["youden"] is not None
    datamodule = trained.datamodule
    datamodule.setup("validate")
    probs, labels = predicted(trained.model, datamodule.val_dataloader())
    assert ((probs > 0.5).long() == labels).float().mean().item() == pytest.approx(record["metrics"]["val/acc"])
    evaluated = evaluate(
        compose_config("eval", [f"ckpt_path={ckpt}", "trainer=cpu", "report=false"], ema_run.parent / "eval")
    )
    assert evaluated["test/acc"] == record["metrics"]["test/acc"]
    assert evaluated["test/auroc"] == record["metrics"]["test/auroc"]


def test_eval_with_flip_tta_report_and_robustness_equal_test_acc(ema_run: Path, tmp_path: Path) -> None:
    """eval tta=null and tta=flip switch the checkpoint's own flip off and on; with flip, the report's selected row
    and the robustness table's clean row equal test/acc, all scored with the mirror."""
    off = evaluate_run(ema_run, tmp_path / "off", "tta=null", "report=false")
    metrics = evaluate_run(
        ema_run, tmp_path / "flip", "tta=flip", "robustness.enabled=true", "robustness.conditions=[clean]"
    )
    record = metrics_json(tmp_path / "flip")
    assert record["tta"] == "flip" and metrics_json(tmp_path / "off")["tta"] is None
    assert record["report"]["at_threshold"]["youden"]["acc"] == metrics["test/acc"]
    assert record["robustness"][0]["acc"] == metrics["test/acc"]
    assert metrics["test/auroc"] != off["test/auroc"], "the mirror's scores changed nothing"


@pytest.mark.parametrize("experiment", ["cifake_top", "cifake_top_scratch"])
def test_recipes_compose(experiment: str, tmp_path: Path) -> None:
    """Each recipe: flip TTA, smoothed BCE, the EMA callback, a reference; cifake_top's weights come from the one
    place effnet_lite0_pretrained names, and exist here."""
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    assert cfg.model.tta == "flip" and cfg.loss.label_smoothing > 0 and 0 < cfg.callbacks.ema.decay < 1
    assert cfg.reference.startswith("target >= 99.")
    if experiment == "cifake_top":
        base = compose_config("train", ["experiment=effnet_lite0_pretrained"], tmp_path)
        assert cfg.model.net.weights_path == base.model.net.weights_path
        assert Path(cfg.model.net.weights_path).is_file()
    else:
        assert not cfg.model.net.pretrained


def test_bad_tta_is_one_line(tmp_path: Path) -> None:
    """model.tta=rotate stops the run with one line naming the key and the values, before any data is read."""
    done = run_command("train", "data=cifake_sample", "model.tta=rotate", f"hydra.run.dir={tmp_path}", timeout=120)
    last = assert_one_line(done)
    assert last.startswith("error: tta='rotate' (model.tta") and "use flip" in last
