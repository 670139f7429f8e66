"""Grad-CAM: the layer it looks at per net, the choice of examples, and the PNG grid and TensorBoard image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from fakedetect.gradcam import gradcam
from fakedetect.nets import MLP, Backbone, ConvAutoencoder, FlexibleCNN, TransferAutoencoder
from fakedetect.reporting.gradcam import FirstOfEachBucket, cam_layer, pick_examples
from fakedetect.utils.errors import ConfigError
from tests.conftest import compose_config, event_tags
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
    # autoencoders: the encoder, which classifying runs, never the decoder, which it does not
    transfer = TransferAutoencoder(cifar_stem=True).eval()
    assert cam_layer(transfer, x32) is transfer.encoder.model.layer4
    conv_ae = ConvAutoencoder().eval()
    assert cam_layer(conv_ae, x32) is conv_ae.encoder[4]  # the third stride-2 conv: 4x4; the fourth is 2x2
    with pytest.raises(ConfigError, match="Grad-CAM needs spatial feature maps and MLP has none"):
        cam_layer(MLP(), x32)


def test_examples_cover_hits_and_misses_of_both_classes() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    probs = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.7, 0.3, 0.1, 0.9])
    # buckets: correct REAL [0, 1, 6], correct FAKE [3, 4, 7], missed REAL [2], missed FAKE [5]
    assert pick_examples(labels, probs, 0.5, 4).tolist() == [0, 3, 2, 5]
    assert pick_examples(labels, probs, 0.5, 6).tolist() == [0, 1, 3, 4, 2, 5]
    assert sorted(pick_examples(labels, probs, 0.5, 100).tolist()) == list(range(8))
    # a probability equal to the threshold is REAL, as everywhere: image 4 (FAKE, 0.7) becomes a miss at 0.7
    assert pick_examples(labels, probs, 0.7, 4).tolist() == [0, 3, 2, 4]


def test_kept_buckets_are_what_pick_examples_needs() -> None:
    """Kept while scoring in batches, the first n of each bucket give the same picks as the whole pool."""
    g = torch.Generator().manual_seed(0)
    labels, probs = torch.randint(0, 2, (200,), generator=g), torch.rand(200, generator=g)
    kept = FirstOfEachBucket(0.5, 6, pool=200)
    for part in torch.arange(200).split(32):
        kept(torch.zeros(len(part), 3, 2, 2, dtype=torch.uint8), probs[part], labels[part])
    k_labels, k_probs = torch.cat(kept.labels), torch.cat(kept.probs)
    assert len(k_labels) <= 24
    picked = probs[pick_examples(labels, probs, 0.5, 6)]
    assert k_probs[pick_examples(k_labels, k_probs, 0.5, 6)].tolist() == picked.tolist()


@pytest.mark.parametrize("bad", ["n=0", "pool=-3", "n=true", "pool=2.5"])
def test_bad_n_or_pool_stops_before_the_checkpoint_is_read(bad: str, tmp_path: Path) -> None:
    key = bad.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}=\S+ must be a positive whole number$"):
        gradcam(compose_config("gradcam", ["ckpt_path=missing.ckpt", bad], tmp_path))


@pytest.mark.parametrize("model", [["model=cnn"], ["model=resnet18", "model.input_size=48"]], ids=["cnn", "resnet18"])
def test_gradcam_writes_png_and_tensorboard_image(
    model: list[str], tmp_path_factory: pytest.TempPathFactory, cifake_path: Path, cache_dir: Path
) -> None:
    """The maps of a detector that resizes its input (model.input_size) are drawn over the images as decoded."""
    ckpt = train_tiny(tmp_path_factory.mktemp("run"), cifake_path, cache_dir, *model)
    out = tmp_path_factory.mktemp("gradcam")
    png = gradcam(compose_config("gradcam", [f"ckpt_path={ckpt}", "n=8", "pool=300", "device=cpu"], out))
    with Image.open(png) as image:
        assert png == out / "gradcam.png" and image.width > 1000 and image.height > 300
    assert "test/gradcam" in event_tags(out / "tensorboard", "images")
