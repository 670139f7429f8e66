"""`python -m fakedetect.bench`: is fakedetect's loop as fast as a plain PyTorch loop on the same machine?

For each model: images/s of `Trainer.fit` steps against a minimal loop over the same net, optimizer, data on
the device, batched augmentation, batch size and precision; their ratio is Lightning's overhead (logging,
metrics, hooks). Also the cold decode and warm cache load of the dataset, and peak GPU memory.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fakedetect.data.datamodule import ImageDataModule
from fakedetect.utils.builders import build_model, resolve_precision
from fakedetect.utils.records import machine

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            _sync(trainer.strategy.root_device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(trainer.strategy.root_device)
        self.end = time.perf_counter()


def lightning_rate(cfg: DictConfig, datamodule: ImageDataModule, warmup: int, steps: int) -> float:
    model = build_model(cfg)
    timer = StepTimer(warmup)
    trainer = instantiate(cfg.trainer, max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0,
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[timer], precision=resolve_precision(cfg.trainer))
    trainer.fit(model, datamodule=datamodule)
    return steps * datamodule.batch_size / (timer.end - timer.start)


def plain_rate(cfg: DictConfig, datamodule: ImageDataModule, device: torch.device, warmup: int, steps: int) -> float:
    """The lean loop: the same pieces with nothing around them."""
    model = build_model(cfg)
    net, loss_fn = model.net.to(device).train(), model.loss
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    optimizer = model.optimizer_factory(params=net.parameters())
    precision = resolve_precision(cfg.trainer)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    images, labels = (torch.from_numpy(a) for a in datamodule.splits["train"])
    images, labels = images.permute(0, 3, 1, 2).contiguous().to(device), labels.to(device)
    batch = datamodule.batch_size
    order = torch.randperm(len(labels), device=device)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        i = order[(step * batch) % (len(labels) - batch):][:batch]
        x = datamodule.preprocess(images[i], train=True)
        with torch.autocast(device.type, dtype=dtype, enabled=precision.endswith("mixed")):
            loss = loss_fn(net(x), labels[i])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def decode_times(cfg: DictConfig) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        cold = instantiate(cfg.data, cache_dir=cache, train_limit=None, test_limit=None)
        start = time.perf_counter()
        n = len(cold.decoded().labels)
        decode = time.perf_counter() - start
        warm = instantiate(cfg.data, cache_dir=cache, train_limit=None, test_limit=None)
        start = time.perf_counter()
        warm.decoded()
        return {"images": n, "cold_decode_s": decode, "warm_load_s": time.perf_counter() - start}


def bench(cfg: DictConfig) -> dict:
    L.seed_everything(cfg.seed)
    result: dict = {"machine": machine(), "precision": resolve_precision(cfg.trainer), "models": {}}
    if cfg.measure_decode:
        result["decode"] = decode_times(cfg)
        log.info("decode: %s", result["decode"])
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    for name in cfg.models:
        model_cfg = compose("bench", overrides=[f"model={name}", *_data_overrides(cfg)])
        steps = {"warmup_steps": cfg.warmup_steps, "timed_steps": cfg.timed_steps,
                 **cfg.steps_override.get(name, {})}
        datamodule = instantiate(model_cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fake = lightning_rate(model_cfg, datamodule, steps["warmup_steps"], steps["timed_steps"])
        plain = plain_rate(model_cfg, datamodule, device, steps["warmup_steps"], steps["timed_steps"])
        row = {"resolution": model_cfg.data.resolution, "batch_size": model_cfg.data.batch_size,
               "fakedetect_img_s": fake, "plain_img_s": plain, "time_ratio": plain / fake, **steps}
        if device.type == "cuda":
            row["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        result["models"][name] = row
        log.info("%s: %s", name, row)
    return result


def _data_overrides(cfg: DictConfig) -> list[str]:
    """The bench's own data settings (root, subset, cache) carried into each model's composed config."""
    keep = ("root", "cache_dir", "train_limit", "test_limit", "loader")
    return [f"data.{k}={cfg.data[k]}" for k in keep if cfg.data.get(k) is not None] + [
        f"trainer.accelerator={cfg.trainer.accelerator}", f"trainer.precision={cfg.trainer.precision}"]


def markdown(result: dict) -> str:
    lines = [f"# fakedetect benchmark: {result['machine']}", "", f"Precision: {result['precision']}.", ""]
    if "decode" in result:
        d = result["decode"]
        lines += [f"Decode of {d['images']:,} images: cold {d['cold_decode_s']:.1f} s, warm cache load "
                  f"{d['warm_load_s']:.2f} s.", ""]
    lines += ["| model | resolution | batch | fakedetect img/s | plain loop img/s | time ratio (fakedetect / plain) "
              "| peak GPU memory |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["models"].items():
        mem = f"{r['peak_gpu_mem_gb']:.2f} GiB" if "peak_gpu_mem_gb" in r else "n/a"
        lines.append(f"| {name} | {r['resolution']} | {r['batch_size']} | {r['fakedetect_img_s']:.0f} | "
                     f"{r['plain_img_s']:.0f} | {r['time_ratio']:.3f} | {mem} |")
    timed = ", ".join(f"{n} {r['timed_steps']}" for n, r in result["models"].items())
    lines += ["", f"Steps timed per model after warm-up: {timed}.", ""]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    result = bench(cfg)
    folder = Path(cfg.report_dir or cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "bench-" + ("gpu" if "CPU" not in result["machine"] else "cpu")
    (folder / f"{stem}.json").write_text(json.dumps({**result, "config": OmegaConf.to_container(cfg.data)},
                                                    indent=2, default=str))
    (folder / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
