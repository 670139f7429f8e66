"""One scorer and one decision rule through every command: train -> checkpoint -> eval -> predict -> gradcam for
every `model=` option and for a compiled net, on tiny trainings over the shared CIFAKE subset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from fakedetect.callbacks.test_scores import TestScores
from fakedetect.gradcam import gradcam
from fakedetect.losses.bce import BCEWithLogits
from fakedetect.metrics.thresholds import decide
from fakedetect.modules import Detector
from fakedetect.nets import MLP
from fakedetect.predict import predict
from fakedetect.train import train
from fakedetect.utils.checkpoint import load_checkpoint, load_trained
from fakedetect.utils.device import device_trainer
from fakedetect.utils.errors import ConfigError
from tests.conftest import (
    assert_one_line,
    compose_config,
    evaluate_run,
    metrics_json,
    run_command,
    subset_train_config,
)
from tests.synthetic import noise_photo

# model option -> extra overrides; ae_transfer gets timm's tiny test ResNet as its encoder and an MSE reconstruction
# (no LPIPS weights needed), to stay fast: the code paths are those of the default ResNet-18
PIPELINES = {
    "cnn": ["model=cnn"],
    "ae_transfer": ["model=ae_transfer", "model.net.name=test_resnet", "loss@model.reconstruction=mse"],
    "compile": ["model=cnn", "model.compile=true"],
    "mlp": ["model=mlp"],
    "resnet18": ["model=resnet18"],
    "timm": ["model=timm", "model.net.name=test_resnet"],
    "autoencoder": ["model=autoencoder"],
}
DEFAULT_RUN = ("cnn", "ae_transfer", "compile")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few images of other sizes and modes, and one file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (size, mode) in enumerate([((48, 40), "RGB"), ((32, 32), "L"), ((20, 64), "RGBA")]):
        noise_photo(rng, *size, mode).save(root / f"{i}.png")
    (root / "readme.txt").write_text("not an image")
    return root


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in DEFAULT_RUN else pytest.mark.slow) for n in PIPELINES]
)
def test_train_eval_predict_gradcam(
    name: str, tmp_path: Path, cifake_path: Path, cache_dir: Path, photos: Path
) -> None:
    run = tmp_path / "train"
    trained_metrics = train(
        subset_train_config(
            cifake_path,
            cache_dir,
            run,
            *PIPELINES[name],
            "model.threshold=youden",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "callbacks.early_stopping=null",
        )
    )
    ckpt = metrics_json(run)["ckpt_path"]
    assert not any("_orig_mod" in key for key in load_checkpoint(ckpt)["state_dict"])

    # eval with the stored threshold: the test metrics of training (to the last digit, unless training ran the
    # compiled kernels, whose float results differ from eager ones), and the report agrees with them exactly
    out = tmp_path / "eval"
    metrics = evaluate_run(run, out, "robustness.enabled=true", "robustness.conditions=[clean]")
    test = {k: v for k, v in trained_metrics.items() if k.startswith("test/")}
    assert {k: metrics[k] for k in test} == (pytest.approx(test, rel=1e-4) if name == "compile" else test)
    record = metrics_json(out)
    assert record["report"]["at_threshold"]["youden"]["acc"] == metrics["test/acc"]
    assert record["robustness"][0]["acc"] == metrics["test/acc"]
    assert record["report"]["classes"] == ["REAL", "FAKE"]

    # predict: the checkpoint's threshold and class names, the non-image file counted, not scored
    rows = predict(
        compose_config(
            "predict", [f"ckpt_path={ckpt}", f"input={photos}", "num_workers=0", "device=cpu"], tmp_path / "predict"
        )
    )
    assert [Path(r["path"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    threshold = metrics["test/threshold"]
    for row in rows:
        assert row["threshold"] == threshold and not row["error"]
        assert row["label"] == ("FAKE" if decide(torch.tensor([row["prob_fake"]]), threshold).item() else "REAL")

    # gradcam: a grid for every net with feature maps; one clear refusal for the MLP
    args = [f"ckpt_path={ckpt}", "n=4", "pool=64", "device=cpu"]
    if name == "mlp":
        with pytest.raises(ConfigError, match="Grad-CAM needs spatial feature maps and MLP has none"):
            gradcam(compose_config("gradcam", args, tmp_path / "gradcam"))
    else:
        png = gradcam(compose_config("gradcam", args, tmp_path / "gradcam"))
        assert png.stat().st_size > 10_000


def test_test_scores_are_the_test_step(cifake_path: Path, cache_dir: Path, tmp_path: Path) -> None:
    """TestScores collects, inside Lightning's test loop, the probabilities the test step computed with every
    image's label and source in split order; `keep` sees every batch, and a test transform (the robustness table's
    degradation) changes what is scored."""
    datamodule = instantiate(subset_train_config(cifake_path, cache_dir, tmp_path).data)
    model = Detector(MLP(hidden=[8]), BCEWithLogits(), torch.optim.Adam)
    seen: list[int] = []
    tested = TestScores(keep=lambda images, p, y: seen.append(len(images)))
    device_trainer("cpu", callbacks=[tested]).test(model, datamodule=datamodule)
    assert tested.scores is not None
    probs, labels, sources, _ = tested.scores
    test = datamodule.splits["test"]
    assert len(probs) == len(test.labels) == sum(seen) and probs.dtype == torch.float32
    assert labels.tolist() == test.labels.tolist() and sources.tolist() == test.sources.tolist()
    assert datamodule.source_names == ["FAKE", "REAL"]  # CIFAKE's sources are its class folders
    with torch.no_grad():
        raw = torch.from_numpy(datamodule.split_images("test")).permute(0, 3, 1, 2)
        expected = model.eval().predict_step((raw,))
    assert torch.allclose(probs, expected, atol=1e-6)
    assert tested.metrics["test/acc_dedup"] == pytest.approx(
        float((decide(probs, 0.5) == labels)[~tested.scores.duplicates].float().mean())
    )

    datamodule.test_transform = torch.zeros_like
    device_trainer("cpu", callbacks=[tested]).test(model, datamodule=datamodule)
    assert tested.scores is not None
    dark = tested.scores.probs
    assert torch.allclose(dark, dark[0].expand(len(dark)))


def test_mlp_gradcam_cli_is_one_line(tmp_path: Path, cifake_path: Path, cache_dir: Path) -> None:
    """The command itself: exit 1, one line naming the fix, no traceback, nothing scored."""
    run = tmp_path / "train"
    train(
        subset_train_config(
            cifake_path,
            cache_dir,
            run,
            "model=mlp",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",
            "test=false",
        )
    )
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    done = run_command(
        "gradcam",
        f"ckpt_path={ckpt}",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'gc'}",
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert assert_one_line(done).startswith("error: Grad-CAM needs spatial feature maps")
    assert load_trained(ckpt).model.net.cam_layers() == []
