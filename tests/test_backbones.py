"""timm backbones (ResNet-18 included): shapes, CIFAR stem, freezing, LR groups, weights resolution, training."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch
import torchvision
from omegaconf import DictConfig
from torchvision.ops.misc import FrozenBatchNorm2d

from fakedetect.losses import BCEWithLogits
from fakedetect.modules import Detector
from fakedetect.modules.checkpoint_format import FORMAT, FORMAT_KEY, upgrade
from fakedetect.nets import MLP, Backbone, PretrainedWeightsError
from fakedetect.train import train
from fakedetect.utils.checkpoint import CONFIG_KEY
from fakedetect.utils.errors import ConfigError
from tests.conftest import SUBSET, WEIGHTS_DIR, needs, run_command

EFFNET = WEIGHTS_DIR / "tf_efficientnet_lite0_in1k.pth"


def trainable(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["resnet18.tv_in1k", "tf_efficientnet_lite0"])
def test_backbone_gives_one_logit_per_image(name: str) -> None:
    with torch.no_grad():
        assert Backbone(name).eval()(torch.randn(3, 3, 32, 32)).shape == (3,)


@pytest.mark.parametrize("input_size", [None, 64])
def test_the_detector_resizes_to_input_size_before_the_net(input_size: int | None) -> None:
    """The device resize is the detector's preprocessing (`model.input_size`), for every net alike."""
    net = Backbone("resnet18.tv_in1k").eval()
    seen: list[tuple[int, ...]] = []
    net.model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    detector = Detector(net, BCEWithLogits(), torch.optim.Adam, input_size=input_size)
    detector.set_statistics([0.5] * 3, [0.25] * 3)
    with torch.no_grad():
        probs = detector.eval().predict_step((torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8),))
    assert probs.shape == (3,) and seen == [(3, 3, input_size or 32, input_size or 32)]
    for bad in (0, -3, 2.5, "224"):
        with pytest.raises(ConfigError, match=r"^model.input_size"):
            Detector(net, BCEWithLogits(), torch.optim.Adam, input_size=bad)  # type: ignore[arg-type]


def test_a_format1_device_resize_moves_to_the_detector() -> None:
    old = {
        "state_dict": {},
        CONFIG_KEY: {"model": {"net": {"_target_": "fakedetect.nets.Backbone", "input_size": 224}}},
    }
    model = upgrade(old)[CONFIG_KEY]["model"]
    assert model["input_size"] == 224 and "input_size" not in model["net"] and old[FORMAT_KEY] == FORMAT


def test_greyscale_input() -> None:
    assert Backbone("resnet18.tv_in1k", in_channels=1).eval()(torch.randn(2, 1, 32, 32)).shape == (2,)


def test_cifar_stem_keeps_32px_detail() -> None:
    plain, cifar = Backbone("resnet18.tv_in1k").eval(), Backbone("resnet18.tv_in1k", cifar_stem=True).eval()
    x = torch.randn(1, 3, 32, 32)
    assert plain.model.forward_features(x).shape[-2:] == (1, 1)
    assert cifar.model.forward_features(x).shape[-2:] == (4, 4)
    assert cifar.model.conv1.stride == (1, 1) and isinstance(cifar.model.maxpool, torch.nn.Identity)
    assert trainable(plain) == trainable(cifar)


def test_freezing_counts_trainable_parameters() -> None:
    full = Backbone("resnet18.tv_in1k")
    head = sum(p.numel() for p in full.model.fc.parameters())
    layer4 = sum(p.numel() for p in full.model.layer4.parameters())
    assert trainable(full) == sum(p.numel() for p in full.parameters())
    frozen = Backbone("resnet18.tv_in1k", freeze=True)
    assert trainable(frozen) == head == 513
    last = Backbone("resnet18.tv_in1k", trainable_stages=1)
    assert trainable(last) == layer4 + head
    # frozen BatchNorms keep their statistics in training mode; trainable ones do not
    last.train()
    assert isinstance(last.model.layer3[0].bn1, FrozenBatchNorm2d)
    assert isinstance(last.model.layer4[0].bn1, torch.nn.BatchNorm2d)
    with pytest.raises(ValueError, match="trainable_stages must be 0..5"):
        Backbone("resnet18.tv_in1k", trainable_stages=9)


def test_backbone_and_head_learning_rates_reach_the_optimizer() -> None:
    net = Backbone("resnet18.tv_in1k", trainable_stages=1, backbone_lr_scale=0.1)
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    model = Detector(net, BCEWithLogits(), adam)
    optimizer = model.configure_optimizers()["optimizer"]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    assert [sum(p.numel() for p in g["params"]) for g in optimizer.param_groups] == [trainable(net) - 513, 513]
    assert all("lr_scale" not in g for g in optimizer.param_groups)
    # a one-cycle schedule keeps the ratio instead of resetting every group to one max_lr
    onecycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-3)
    model = Detector(net, BCEWithLogits(), adam, scheduler=onecycle, scheduler_interval="step")
    model._trainer = SimpleNamespace(estimated_stepping_batches=100)
    optimizer = model.configure_optimizers()["optimizer"]
    assert [g["max_lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])


def test_nets_without_groups_keep_one_group() -> None:
    model = Detector(
        MLP(hidden=[], in_channels=1, resolution=2), BCEWithLogits(), functools.partial(torch.optim.SGD, lr=0.1)
    )
    optimizer = model.configure_optimizers()["optimizer"]
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == 0.1


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty cache, as on every machine here; so no test waits on download retries."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_missing_weights_is_one_clear_error(offline_hub: None) -> None:
    net = Backbone("resnet18.tv_in1k", pretrained=True)
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError) as err:
        net.load_pretrained()
    message = str(err.value)
    assert "\n" not in message and "resnet18" in message
    assert "model.net.weights_path=" in message and "model.net.pretrained=false" in message
    assert time.perf_counter() - start < 30


def test_missing_or_unfitting_weights_file(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="nope.pth is not a file"):
        Backbone("resnet18.tv_in1k", pretrained=True, weights_path=str(tmp_path / "nope.pth")).load_pretrained()
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(PretrainedWeightsError, match="other.pth does not fit resnet18"):
        Backbone("resnet18.tv_in1k", pretrained=True, weights_path=str(other)).load_pretrained()


def test_torchvision_weights_file_loads_except_the_head(tmp_path: Path) -> None:
    """A torchvision ResNet-18 state dict (what resnet18-f37072fd.pth holds) loads as a local file."""
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    net = Backbone("resnet18.tv_in1k", pretrained=True, weights_path=str(path), freeze=True)
    head = net.model.fc.weight.detach().clone()
    net.load_pretrained()
    assert torch.equal(net.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(net.model.bn1.running_mean, source.bn1.running_mean)
    assert torch.equal(net.model.fc.weight, head)


def test_scratch_loads_nothing(offline_hub: None) -> None:
    net = Backbone("resnet18.tv_in1k")
    before = net.model.conv1.weight.detach().clone()
    net.load_pretrained()
    assert torch.equal(net.model.conv1.weight, before)


def test_real_efficientnet_weights_load() -> None:
    needs(EFFNET)
    state = torch.load(EFFNET, map_location="cpu", weights_only=True)
    net = Backbone("tf_efficientnet_lite0", pretrained=True, weights_path=str(EFFNET))
    net.load_pretrained()
    assert torch.equal(net.model.blocks[6][0].conv_pw.weight, state["blocks.6.0.conv_pw.weight"])
    grey = Backbone("tf_efficientnet_lite0", pretrained=True, weights_path=str(EFFNET), in_channels=1)
    grey.load_pretrained()
    assert torch.allclose(grey.model.conv_stem.weight, state["conv_stem.weight"].sum(1, keepdim=True))


def test_resnet18_trains_on_cifake(train_cfg: Callable[..., DictConfig]) -> None:
    metrics = train(train_cfg("model=resnet18", "debug=fdr"))
    assert {"train/loss", "val/acc", "test/acc", "test/auroc"} <= set(metrics)


def test_pretrained_experiment_without_weights_stops_the_run(
    train_cfg: Callable[..., DictConfig], offline_hub: None
) -> None:
    with pytest.raises(PretrainedWeightsError, match="model.net.weights_path="):
        train(train_cfg("experiment=resnet18_pretrained", "debug=fdr"))


def test_cli_without_weights_ends_with_one_line(cifake_path: Path, cache_dir: Path, tmp_path: Path) -> None:
    """`python -m fakedetect.train` with no weights to be had: no traceback, no hub retries, the fix named last."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # the default: timm's cache only
    env |= {
        "CIFAKE": str(cifake_path),
        "FAKEDETECT_CACHE": str(cache_dir),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "CUDA_VISIBLE_DEVICES": "",
    }
    start = time.perf_counter()
    run = run_command(
        "train",
        "model=resnet18",
        "model.net.pretrained=true",
        *SUBSET,
        "trainer=cpu",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={tmp_path / 'run'}",
        env=env,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "Retrying" not in run.stdout + run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no pretrained weights for resnet18")
    assert "model.net.weights_path=" in last and "model.net.pretrained=false" in last
    assert time.perf_counter() - start < 60  # the hub's retries alone would take ~50 s
