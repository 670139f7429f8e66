"""Autoencoder nets and AutoencoderDetector: shapes, frozen stages, targets, and short real trainings on CIFAKE
whose checkpoint, eval and TensorBoard carry the chosen threshold and the reconstructions."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from tensorboard.util.tensor_util import make_ndarray
from torch import nn

from fakedetect.losses import BCEWithLogits
from fakedetect.modules.autoencoder import AutoencoderDetector
from fakedetect.modules.checkpoint_format import FORMAT_KEY
from fakedetect.nets import ConvAutoencoder, TransferAutoencoder
from fakedetect.train import train
from fakedetect.utils.checkpoint import CONFIG_KEY, load_checkpoint, load_trained
from tests.conftest import (
    evaluate_run,
    event_files,
    event_tags,
    metrics_json,
    needs,
    subset_train_config,
)
from tests.test_losses import WEIGHTS


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize(
    "make",
    [ConvAutoencoder, partial(TransferAutoencoder, cifar_stem=True), partial(TransferAutoencoder, cifar_stem=False)],
)
def test_autoencoders_classify_and_reconstruct(make: Callable[..., nn.Module], channels: int) -> None:
    net = make(in_channels=channels, resolution=32).eval()
    x = torch.randn(2, channels, 32, 32)
    logits, reconstruction = net.autoencode(x)
    assert logits.shape == (2,) and reconstruction.shape == x.shape
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1  # a sigmoid: [0, 1] images
    assert torch.equal(net(x), logits)


def test_conv_autoencoder_is_the_write_ups_model_1() -> None:
    net = ConvAutoencoder(filters=(32, 64, 128, 256), fc_size=256)
    assert sum(isinstance(m, nn.Conv2d) for m in net.encoder) == 4
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in net.decoder) == 4
    assert isinstance(net.decoder[-1], nn.Sigmoid)
    assert [m.in_features for m in net.classifier if isinstance(m, nn.Linear)] == [256 * 2 * 2, 256]
    with pytest.raises(ValueError, match="multiple of 16"):
        ConvAutoencoder(resolution=40)


def test_transfer_autoencoder_trains_only_its_last_stages() -> None:
    net = TransferAutoencoder(name="resnet18", trainable_stages=2, resolution=32)
    trainable = {name.split(".")[1] for name, p in net.encoder.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}
    assert all(p.requires_grad for p in net.decoder.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.decoder)
    grouped = [p for group in net.param_groups() for p in group["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == sum(p.requires_grad for p in net.parameters())


def test_reconstruction_target_is_the_unnormalized_batch() -> None:
    model = AutoencoderDetector(
        ConvAutoencoder(in_channels=1), BCEWithLogits(), nn.MSELoss(), partial(torch.optim.Adam)
    )
    images = torch.rand(2, 1, 32, 32)
    with pytest.raises(RuntimeError, match="no normalization statistics"):  # never a silently wrong target
        model.unnormalize(images)
    model.set_statistics([0.4], [0.2])
    assert torch.allclose(model.unnormalize((images - 0.4) / 0.2), images, atol=1e-6)
    assert {"data_mean", "data_std"} <= set(model.state_dict())  # buffers: saved in every checkpoint


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory: pytest.TempPathFactory, cifake_path: Path, cache_dir: Path) -> tuple[DictConfig, dict]:
    """ae_conv (with BatchNorm, to learn fast), Youden threshold, classification frozen for a quarter, 2 epochs."""
    out = tmp_path_factory.mktemp("ae_run")
    cfg = subset_train_config(
        cifake_path,
        cache_dir,
        out,
        "experiment=ae_conv",
        "trainer.max_epochs=2",
        "model.net.batch_norm=true",
        "model.threshold=youden",
        "model.c_freeze=0.25",
    )
    return cfg, train(cfg)


# what fakedetect.callbacks.figures draws for an autoencoder's test
FIGURES = {"test/reconstructions", "test/misclassified", "test/confusion_matrix", "test/roc"}


def test_ae_conv_learns_and_tests_at_the_youden_threshold(ae_run: tuple[DictConfig, dict]) -> None:
    cfg, metrics = ae_run
    assert metrics["test/acc"] > 0.65, metrics
    assert {"train/recon_loss", "train/class_loss", "val/recon_loss", "test/recon_loss"} <= set(metrics)
    record = metrics_json(Path(cfg.paths.output_dir))
    thresholds = load_checkpoint(record["ckpt_path"])["thresholds"]
    assert set(thresholds) == {"0.5", "youden", "f1", "selected", "value"}
    assert thresholds["selected"] == "youden" and thresholds["value"] == thresholds["youden"]
    assert 0 < thresholds["youden"] < 1 and 0 < thresholds["f1"] < 1
    assert metrics["test/threshold"] == pytest.approx(thresholds["youden"])


def test_eval_applies_the_checkpoints_threshold(ae_run: tuple[DictConfig, dict], tmp_path: Path) -> None:
    cfg, metrics = ae_run
    result = evaluate_run(Path(cfg.paths.output_dir), tmp_path, "report=false")
    for key in ("test/threshold", "test/acc", "test/f1", "test/recon_loss"):
        assert result[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert event_tags(tmp_path, "images") >= FIGURES  # eval's TensorBoard has the figure callbacks' images too


def test_module_brings_its_statistics_and_old_checkpoints_load(ae_run: tuple[DictConfig, dict], tmp_path: Path) -> None:
    """The trained module carries the train split's statistics; a checkpoint written before format versions (its
    statistics only in the data module's state, and the autoencoder's old `model.n_images`) still loads with them."""
    cfg, _ = ae_run
    ckpt_path = metrics_json(Path(cfg.paths.output_dir))["ckpt_path"]
    trained = load_trained(ckpt_path)
    datamodule = trained.datamodule
    datamodule.setup("fit")  # no model attached: it computes the statistics of its train split
    mean, std = datamodule.mean, datamodule.std
    model = trained.model
    assert model.data_mean.tolist() == pytest.approx(mean) and model.data_std.tolist() == pytest.approx(std)
    old = load_checkpoint(ckpt_path)
    state = old["state_dict"]
    old["ImageDataModule"] = {"mean": state.pop("data_mean").tolist(), "std": state.pop("data_std").tolist()}
    del old[FORMAT_KEY]
    old[CONFIG_KEY]["model"]["n_images"] = 8
    torch.save(old, tmp_path / "old.ckpt")
    loaded = load_trained(tmp_path / "old.ckpt").model
    assert loaded.data_mean.tolist() == pytest.approx(mean) and loaded.data_std.tolist() == pytest.approx(std)


def test_tensorboard_has_reconstructions_mistakes_and_schedule(ae_run: tuple[DictConfig, dict]) -> None:
    cfg, _ = ae_run
    tensorboard = Path(cfg.paths.output_dir) / "tensorboard"
    c_weights = [
        float(make_ndarray(e.tensor_proto))
        for events in event_files(tensorboard)
        if "train/c_weight" in events.PluginTagToContent("scalars")
        for e in events.Tensors("train/c_weight")
    ]
    assert {"val/reconstructions", *FIGURES} <= event_tags(tensorboard, "images")
    # frozen for the first quarter of the steps: epoch 1 averages below 1, epoch 2 is all 1
    assert len(c_weights) == 2 and 0.3 < c_weights[0] < 0.7 and c_weights[1] == 1.0


def test_greyscale_transfer_autoencoder_trains_with_hybrid_loss(train_cfg: Callable[..., DictConfig]) -> None:
    """The write-up's greyscale recipe (transfer AE, hybrid L1 / SSIM / LPIPS, focal, Youden), one batch each."""
    needs(WEIGHTS)
    cfg = train_cfg("experiment=ae_greyscale", "model.net.cifar_stem=false", "debug=fdr")
    assert cfg.data.channels == 1 and cfg.model.net.in_channels == 1
    metrics = train(cfg)
    assert {"train/recon_loss", "val/threshold_youden", "test/threshold", "test/acc"} <= set(metrics)
    assert 0 < metrics["test/threshold"] < 1 and metrics["train/recon_loss"] > 0
