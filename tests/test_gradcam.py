"""Grad-CAM: the layer it looks at per net, the choice of examples, and the PNG grid and TensorBoard image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

from fakedetect.gradcam import gradcam
from fakedetect.nets import MLP, Backbone, FlexibleCNN
from fakedetect.reporting.gradcam import cam_layer, pick_examples
from tests.conftest import compose_config
from tests.test_predict import train_tiny


def test_cam_layer_is_the_deepest_with_a_useful_map() -> None:
    x32, x224 = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 224, 224)
    cnn = FlexibleCNN(n_layers=3, filters=(8, 16, 32), kernel_sizes=(3, 3, 3), batch_norm=True).eval()
    assert cam_layer(cnn, x32) is cnn.features[8]
    resnet = Backbone("resnet18.tv_in1k").eval()
    assert cam_layer(resnet, x224) is resnet.model.layer4  # 7x7
    assert cam_layer(resnet, x32) is resnet.model.layer2  # layer4 is 1x1 and layer3 2x2 at 32 px
    cifar = Backbone("resnet18.tv_in1k", cifar_stem=True).eval()
    assert cam_layer(cifar, x32) is cifar.model.layer4  # 4x4
    with pytest.raises(ValueError, match="no Conv2d"):
        cam_layer(MLP(), x32)


def test_examples_cover_hits_and_misses_of_both_classes() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    probs = np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.3, 0.1, 0.9])
    # buckets: correct REAL [0, 1, 6], correct FAKE [3, 4, 7], missed REAL [2], missed FAKE [5]
    assert pick_examples(labels, probs, 0.5, 4).tolist() == [0, 3, 2, 5]
    assert pick_examples(labels, probs, 0.5, 6).tolist() == [0, 1, 3, 4, 2, 5]
    assert sorted(pick_examples(labels, probs, 0.5, 100).tolist()) == list(range(8))


@pytest.mark.parametrize("model", ["cnn", "resnet18"])
def test_gradcam_writes_png_and_tensorboard_image(
    model: str, tmp_path_factory: pytest.TempPathFactory, cifake_path: Path, cache_dir: Path
) -> None:
    ckpt = train_tiny(tmp_path_factory.mktemp("run"), cifake_path, cache_dir, f"model={model}")
    out = tmp_path_factory.mktemp("gradcam")
    png = gradcam(compose_config("gradcam", [f"ckpt_path={ckpt}", "n=8", "pool=300", "device=cpu"], out))
    with Image.open(png) as image:
        assert png == out / "gradcam.png" and image.width > 1000 and image.height > 300
    tags = set()
    for event_file in (out / "tensorboard").glob("events.out.tfevents.*"):
        events = EventAccumulator(str(event_file))
        events.Reload()
        if "images" in events.ActivePlugins():
            tags |= set(events.PluginTagToContent("images"))
    assert "test/gradcam" in tags
