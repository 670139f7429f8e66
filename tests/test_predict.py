"""`fakedetect.predict` on people's own images: any size, format and mode, a corrupt file, CSV, JSON, globs."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from fakedetect.data.decode import decode_image
from fakedetect.data.loaders.files import expand_input, views
from fakedetect.modules.checkpoint_format import FORMAT_KEY
from fakedetect.predict import predict
from fakedetect.train import train
from fakedetect.utils.checkpoint import CONFIG_KEY, load_checkpoint, load_trained
from fakedetect.utils.errors import ConfigError
from tests.conftest import assert_one_line, compose_config, run_command, subset_train_config
from tests.synthetic import noise_photo


def train_tiny(out: Path, cifake: Path, cache: Path, *overrides: str) -> Path:
    """A few training batches on the shared CIFAKE subset; returns the last checkpoint."""
    train(
        subset_train_config(
            cifake, cache, out, "trainer.max_epochs=1", "+trainer.limit_train_batches=4", "test=false", *overrides
        )
    )
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, cifake_path: Path, cache_dir: Path) -> Path:
    """ResNet-18 started from a local weights file, which is deleted after training: predict must not need it."""
    weights = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    ckpt = train_tiny(
        tmp_path_factory.mktemp("run"),
        cifake_path,
        cache_dir,
        "model=resnet18",
        "model.net.pretrained=true",
        f"model.net.weights_path={weights}",
    )
    weights.unlink()
    return ckpt


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images as people have them: JPEG, PNG, WebP, GIF; RGB, greyscale, RGBA, palette; any size; one corrupt."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    image = partial(noise_photo, rng)
    image(640, 480, "RGB").save(root / "photo.jpg", quality=90)
    image(50, 70, "L").save(root / "grey.png")
    image(33, 21, "RGBA").save(root / "alpha.webp")
    image(100, 20, "P").save(root / "palette.gif")
    (root / "nested").mkdir()
    image(32, 32, "RGB").save(root / "nested" / "small.PNG")
    image(64, 64, "RGB").save(root / "full.jpg")
    (root / "broken.jpg").write_bytes((root / "full.jpg").read_bytes()[:300])  # a truncated download
    (root / "full.jpg").unlink()
    (root / "notes.txt").write_text("not an image, not listed")
    return root


NAMES = ["alpha.webp", "broken.jpg", "grey.png", "small.PNG", "palette.gif", "photo.jpg"]


def predict_images(ckpt: Path, images: Path, out: Path, *overrides: str) -> list[dict]:
    """`predict` of `images` (a file, folder or glob) by the checkpoint `ckpt`, run in `out`."""
    return predict(compose_config("predict", [f"ckpt_path={ckpt}", f"input={images}", *overrides], out))


def check_rows(rows: list[dict], threshold: float) -> None:
    for row in rows:
        if Path(row["path"]).name == "broken.jpg":
            assert row["error"] and row["prob_fake"] in (None, "") and row["label"] in (None, "")
            continue
        prob = float(row["prob_fake"])
        assert 0.0 <= prob <= 1.0 and not row["error"]
        assert row["label"] == ("FAKE" if prob > threshold else "REAL")
        assert float(row["threshold"]) == threshold


def test_predict_a_folder_to_csv(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    rows = predict_images(checkpoint, photos, tmp_path, "num_workers=0")
    with (tmp_path / "predictions.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in table] == NAMES
    assert list(table[0]) == ["path", "prob_fake", "label", "threshold", "crops", "error"]
    assert [r["path"] for r in table] == [r["path"] for r in rows]
    assert "Error" in table[1]["error"]
    check_rows(table, 0.5)


def test_predict_to_json_with_a_threshold(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.json"
    rows = predict_images(
        checkpoint, photos, tmp_path, f"output={out}", "threshold=0.3", "batch_size=2", "num_workers=2"
    )
    assert json.loads(out.read_text()) == rows
    assert [Path(r["path"]).name for r in rows] == NAMES
    check_rows(rows, 0.3)


def test_predict_cli_with_a_glob(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    """The documented command with a glob: only the matching images, decoded as in training."""
    run_command(
        "predict",
        f"ckpt_path={checkpoint}",
        f"input='{photos}/**/*.[pP][nN][gG]'",
        f"hydra.run.dir={tmp_path}",
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        check=True,
    )
    with (tmp_path / "predictions.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in table] == ["grey.png", "small.PNG"]
    check_rows(table, 0.5)


def test_expand_input(photos: Path) -> None:
    assert expand_input(str(photos / "notes.txt")) == ([photos / "notes.txt"], 0)  # a named file is always tried
    files, ignored = expand_input(f"{photos}/*.jp*g")
    assert [p.name for p in files] == ["broken.jpg", "photo.jpg"] and ignored == 0
    assert expand_input(str(photos))[1] == 1  # notes.txt, counted
    with pytest.raises(ConfigError, match="no images found for input="):
        expand_input(str(photos / "*.heic"))


def test_predict_checks_its_output_before_scoring(
    checkpoint: Path, photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An existing output is kept unless overwrite=true; an unwritable one stops the run before any scoring; the
    non-image files of a folder input are counted in the log."""
    out = tmp_path / "preds.csv"
    out.write_text("keep me")
    args = [f"output={out}", "num_workers=0"]
    with pytest.raises(ConfigError, match="exists; pass overwrite=true"):
        predict_images(checkpoint, photos, tmp_path, *args)
    assert out.read_text() == "keep me"
    with caplog.at_level(logging.INFO, logger="fakedetect.predict"):
        predict_images(checkpoint, photos, tmp_path, *args, "overwrite=true")
    assert out.read_text().startswith("path,prob_fake")
    assert any("ignored 1 files" in r.getMessage() for r in caplog.records)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for bad, message in ((blocker / "preds.csv", "cannot be written"), (tmp_path, "is a folder")):
        with pytest.raises(ConfigError, match=message):
            predict_images(checkpoint, photos, tmp_path, f"output={bad}")


def test_predict_cli_bad_input_is_one_line(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    out.write_text("")
    for args, message in (
        ([f"input={photos}", f"output={out}"], f"error: output={out} exists"),
        ([f"input={photos}/*.heic"], "error: no images found for input="),
        ([f"input={photos}", "threshold=1.5"], "error: threshold=1.5 must be a probability"),
    ):
        done = run_command(
            "predict",
            f"ckpt_path={checkpoint}",
            *args,
            f"hydra.run.dir={tmp_path}",
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
        assert assert_one_line(done).startswith(message)


def test_checkpoint_from_before_val_thresholds(
    checkpoint: Path, photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint written before Detector kept the `val_thresholds` buffer loads with a warning and predicts."""
    old = load_checkpoint(checkpoint)
    del old["state_dict"]["val_thresholds"], old[FORMAT_KEY]
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    with caplog.at_level(logging.WARNING, logger="fakedetect.modules.checkpoint_format"):
        trained = load_trained(path)
    assert all(math.isnan(t) for t in trained.model.val_thresholds.tolist())
    warnings = [r.getMessage() for r in caplog.records if r.name == "fakedetect.modules.checkpoint_format"]
    assert len(warnings) == 1 and "val_thresholds" in warnings[0]
    rows = predict_images(path, photos, tmp_path, "num_workers=0")
    check_rows(rows, 0.5)


def test_views_five_crops_and_tiles() -> None:
    """The windows predict averages: torchvision's five crops and the centred grid of tiles, at native pixels."""
    array = np.random.default_rng(1).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    data = buf.getvalue()
    chw = torch.from_numpy(array).permute(2, 0, 1)
    five = torchvision.transforms.functional.five_crop(chw, [32, 32])
    assert torch.equal(views(data, 32, crops=5), torch.stack(five))
    tiles = views(data, 32, crops="tiles")  # 2 rows x 3 columns of the 64 x 96 grid centred at (3, 2)
    expected = [chw[:, 3 + 32 * r : 35 + 32 * r, 2 + 32 * c : 34 + 32 * c] for r in range(2) for c in range(3)]
    assert torch.equal(tiles, torch.stack(expected))
    assert torch.equal(views(data, 32, crops="tiles", max_tiles=4), torch.stack(expected)[[0, 2, 3, 5]])
    one = views(data, 32, "resize_crop")
    assert one.shape == (1, 3, 32, 32) and torch.equal(
        one[0], torch.from_numpy(decode_image(data, 32, "resize_crop")).permute(2, 0, 1)
    )
    small = io.BytesIO()
    Image.fromarray(array[:10, :20]).save(small, "PNG")  # scaled up to 64 x 32 so that a 32 px window fits
    assert views(small.getvalue(), 32, crops=5).shape == (5, 3, 32, 32)
    assert views(small.getvalue(), 32, crops="tiles").shape == (2, 3, 32, 32)


def test_predict_averages_crops_and_tiles(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    trained = load_trained(checkpoint)
    model, dm = trained.model, trained.datamodule
    tiles = {"photo.jpg": 16, "grey.png": 2, "alpha.webp": 1, "palette.gif": 5, "small.PNG": 1}  # max_tiles=16
    for crops, counts in ((5, dict.fromkeys(tiles, 5)), ("tiles", tiles)):
        rows = predict_images(
            checkpoint,
            photos,
            tmp_path,
            f"crops={crops}",
            "num_workers=0",
            "batch_size=7",
            f"output={tmp_path}/out_{crops}.csv",
        )
        check_rows(rows, 0.5)
        for row in rows:
            name = Path(row["path"]).name
            if name == "broken.jpg":
                assert row["crops"] is None
                continue
            windows = views(Path(row["path"]).read_bytes(), dm.resolution, crops=crops)
            assert row["crops"] == counts[name] == len(windows)
            with torch.no_grad():
                expected = model.eval().predict_step((windows,))
            assert row["prob_fake"] == pytest.approx(expected.mean().item(), abs=1e-5)


def test_predict_bad_fit_crops_or_max_tiles_stop_before_scoring(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    for bad, message in (
        (["fit=crop"], r"^fit=crop is not a fit; use one of squash, center_crop, random_crop, "),
        (["crops=3"], r"^crops=3 must be 1 \(the image as fit= makes it\), 5 .* or tiles$"),
        (["crops=tiles", "max_tiles=0"], r"^max_tiles=0 must be a positive integer"),
    ):
        with pytest.raises(ConfigError, match=message):
            predict_images(checkpoint, photos, tmp_path, *bad)
    assert not (tmp_path / "predictions.csv").exists()


def test_predict_heic_with_the_fit_overridden(checkpoint: Path, tmp_path: Path) -> None:
    """A phone photo (HEIC, 3:2) is scored; fit=resize_crop decodes it otherwise than the checkpoint's squash."""
    folder = tmp_path / "phone"
    folder.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(folder / "IMG_0001.HEIC", quality=90)
    probs = {}
    for fit in ("squash", "resize_crop"):
        rows = predict_images(
            checkpoint, folder, tmp_path, f"fit={fit}", "num_workers=0", f"output={tmp_path}/{fit}.json"
        )
        assert [Path(r["path"]).name for r in rows] == ["IMG_0001.HEIC"] and not rows[0]["error"]
        probs[fit] = rows[0]["prob_fake"]
    trained = load_trained(checkpoint)
    data = (folder / "IMG_0001.HEIC").read_bytes()
    for fit, prob in probs.items():
        image = torch.from_numpy(decode_image(data, trained.datamodule.resolution, fit)).permute(2, 0, 1)[None]
        with torch.no_grad():
            expected = trained.model.eval().predict_step((image,))
        assert prob == pytest.approx(expected.item(), abs=1e-5)
    assert probs["squash"] != probs["resize_crop"]


def test_predict_keeps_the_checkpoints_pixel_limit(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    """Files are refused above the checkpoint's data.max_pixels, as its training data was, not above a default."""
    stored = torch.load(checkpoint, weights_only=True)
    stored[CONFIG_KEY]["data"]["max_pixels"] = 10_000  # photo.jpg has 640 x 480 pixels, the others under 10,000
    small_limit = tmp_path / "small_limit.ckpt"
    torch.save(stored, small_limit)
    for crops in (1, 5):
        rows = predict_images(
            small_limit, photos, tmp_path, f"crops={crops}", "num_workers=0", f"output={tmp_path}/{crops}.csv"
        )
        refused = {Path(r["path"]).name for r in rows if r["error"] and "max_pixels=10000" in r["error"]}
        assert refused == {"photo.jpg"}
        assert {Path(r["path"]).name for r in rows if not r["error"]} == set(NAMES) - {"photo.jpg", "broken.jpg"}
