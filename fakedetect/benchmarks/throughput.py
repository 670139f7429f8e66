"""Is fakedetect's loop as fast as a plain PyTorch loop on the same machine? (the `python -m fakedetect.bench` command)

For each model (or row: a model with its own data settings, e.g. a high-resolution folder streamed at 224 px):
images/s of `Trainer.fit` steps against a minimal loop over the same net, optimizer, loader batches, batched
augmentation, batch size and precision; their ratio is Lightning's overhead (logging, metrics, hooks); on a GPU,
its utilisation sampled during each timed span (is the loader keeping it busy?). Also the time to accuracy of a
training recipe (ResNet-18 from scratch by default: training seconds until the test accuracy, measured after every
epoch outside the timed span, first reaches each target), the cold decode and warm cache load of the dataset, and
peak GPU memory.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import lightning as L
import torch
from hydra import compose
from omegaconf import DictConfig

from fakedetect.callbacks.throughput import EpochTester, StepTimer, sync
from fakedetect.data.datamodule import ImageDataModule
from fakedetect.utils.builders import build_model, instantiate, resolve_precision
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.records import machine
from fakedetect.utils.sampling import Sampler

log = logging.getLogger(__name__)
# what a `per_model` row may set: its steps and batch; `model` (a model config, default the row's name), and
# `data_config` (a data config such as folder, instead of the bench's data) with `data` (data.* values)
ROW_KEYS = {"warmup_steps", "timed_steps", "batch_size", "model", "data_config", "data"}


class Span(NamedTuple):
    """One timed run: images/s over the perf_counter interval [start, end]."""

    images_s: float
    start: float
    end: float


class Utilisation(Sampler):
    """GPU utilisation (%) read every `interval` s in a thread; `mean(*spans)` averages the readings inside them."""

    def __init__(self, read: Callable[[], float], interval: float = 0.2) -> None:
        super().__init__(interval)
        self.read = read
        self.samples: list[tuple[float, float]] = []
        self.error: str | None = None

    def sample(self) -> bool:
        try:
            self.samples.append((time.perf_counter(), self.read()))
        except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as err:
            self.error = f"{type(err).__name__}: {err}"
            log.warning("GPU utilisation unreadable, not sampled: %s", self.error)
            return False
        return True

    def mean(self, *spans: Span) -> float | None:
        inside = [v for t, v in self.samples if any(s.start <= t <= s.end for s in spans)]
        return statistics.fmean(inside) if inside else None


def utilisation_reader(device: torch.device) -> Callable[[], float] | None:
    """How to read the device's utilisation: NVML through torch (needs pynvml), else nvidia-smi; None on a CPU."""
    if device.type != "cuda":
        return None
    try:
        import pynvml  # noqa: F401  (torch.cuda.utilization needs it)

        return lambda: float(torch.cuda.utilization(device))
    except ImportError:
        return nvidia_smi_reader(f"GPU-{torch.cuda.get_device_properties(device).uuid}")


def nvidia_smi_reader(gpu: str) -> Callable[[], float]:
    """`nvidia-smi`'s utilization.gpu of one GPU (index or UUID), per call."""
    smi = shutil.which("nvidia-smi") or "nvidia-smi"

    def read() -> float:
        done = subprocess.run(
            [smi, f"--id={gpu}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return float(done.stdout.split()[0])

    return read


def bench_trainer(cfg: DictConfig, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    """The configured trainer with nothing but the measurement around it: no validation, logging or checkpoints."""
    return instantiate(
        cfg.trainer,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        precision=resolve_precision(cfg.trainer),
        **kwargs,
    )


def lightning_rate(cfg: DictConfig, datamodule: ImageDataModule, warmup: int, steps: int) -> Span:
    model = build_model(cfg)
    timer = StepTimer(warmup)
    bench_trainer(cfg, [timer], max_steps=warmup + steps, max_epochs=-1).fit(model, datamodule=datamodule)
    return Span(steps * datamodule.batch_size / (timer.end - timer.start), timer.start, timer.end)


def time_to_accuracy(cfg: DictConfig, data_overrides: list[str]) -> dict:
    """Train `experiment` as its config says (validation off) and test after every epoch."""
    run_cfg = compose("train", overrides=[f"experiment={cfg.experiment}", *data_overrides, *cfg.overrides])
    datamodule = instantiate(run_cfg.data)
    tester = EpochTester(list(cfg.targets))
    start = time.perf_counter()
    bench_trainer(run_cfg, [tester]).fit(build_model(run_cfg), datamodule=datamodule)
    sizes = datamodule.split_sizes
    return {
        "experiment": cfg.experiment,
        "overrides": list(cfg.overrides),
        "train_images": sizes["train"],
        "test_images": sizes["test"],
        "max_epochs": run_cfg.trainer.max_epochs,
        "curve": tester.curve,
        "reached_s": tester.reached(),
        "wall_s": time.perf_counter() - start,
    }


def plain_rate(cfg: DictConfig, datamodule: ImageDataModule, device: torch.device, warmup: int, steps: int) -> Span:
    """The lean loop: the same pieces with nothing around them."""
    model = build_model(cfg).to(device)
    model.set_statistics(*datamodule.statistics())  # what Lightning's setup hands the detector
    net, loss_fn = model.net.train(), model.loss
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    optimizer = model.optimizer_factory(params=net.parameters())
    precision = resolve_precision(cfg.trainer)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    batches = _forever(datamodule)
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        images, labels = (t.to(device, non_blocking=True) for t in next(batches)[:2])
        x = model.preprocess(datamodule.augmented(images))
        with torch.autocast(device.type, dtype=dtype, enabled=precision.endswith("mixed")):
            loss = loss_fn(net(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    end = time.perf_counter()
    return Span(steps * datamodule.batch_size / (end - start), start, end)


def _forever(datamodule: ImageDataModule) -> Iterator[tuple[torch.Tensor, ...]]:
    """The data module's own training batches, epoch after epoch: the loop reads data as `Trainer.fit` does (the
    memory loader's split already on the device it trained on), with any loader; skipped (None) batches left out."""
    while True:
        yield from (batch for batch in datamodule.train_dataloader() if batch is not None)


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
    L.seed_everything(cfg.seed, verbose=False)
    result: dict = {
        "machine": machine(),
        "precision": resolve_precision(cfg.trainer),
        "repeats": cfg.repeats,
        "models": {},
    }
    if cfg.measure_decode:
        result["decode"] = decode_times(cfg)
        log.info("decode: %s", result["decode"])
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    for name in cfg.models:
        result["models"][name] = row = measure_row(cfg, name, device)
        log.info("%s: %s", name, row)
    if cfg.time_to_accuracy.enabled:
        result["time_to_accuracy"] = time_to_accuracy(cfg.time_to_accuracy, _data_overrides(cfg, limits=False))
    return result


def measure_row(cfg: DictConfig, name: str, device: torch.device) -> dict:
    """One row: both loops `repeats` times, alternated (drift in the machine's speed hits both alike), over the
    row's data prepared first (a cold decode into the cache, or a stream's digests and statistics; timed apart)."""
    own = {"warmup_steps": cfg.warmup_steps, "timed_steps": cfg.timed_steps, **cfg.per_model.get(name, {})}
    unknown = sorted(set(own) - ROW_KEYS)
    if unknown:
        raise ConfigError(f"per_model.{name}: unknown key(s) {unknown}; a row takes {sorted(ROW_KEYS)}")
    batch = [f"data.batch_size={own['batch_size']}"] if "batch_size" in own else []
    model_cfg = compose("bench", overrides=[f"model={own.get('model', name)}", *row_data_overrides(cfg, own), *batch])
    steps = {k: own[k] for k in ("warmup_steps", "timed_steps")}
    datamodule = instantiate(model_cfg.data)
    start = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup("fit")
    prepare_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    spans: dict[str, list[Span]] = {"fakedetect": [], "plain": []}
    reader = utilisation_reader(device)
    gpu = Utilisation(reader) if reader else None
    with gpu or contextlib.nullcontext():
        for _ in range(cfg.repeats):
            spans["fakedetect"].append(lightning_rate(model_cfg, datamodule, own["warmup_steps"], own["timed_steps"]))
            spans["plain"].append(plain_rate(model_cfg, datamodule, device, own["warmup_steps"], own["timed_steps"]))
    rates = {loop: [s.images_s for s in runs] for loop, runs in spans.items()}
    fake, plain = statistics.median(rates["fakedetect"]), statistics.median(rates["plain"])
    row = {
        "model": own.get("model", name),
        "resolution": model_cfg.data.resolution,
        "fit": model_cfg.data.fit,
        "loader": model_cfg.data.loader,
        "num_workers": model_cfg.data.num_workers,
        "batch_size": model_cfg.data.batch_size,
        "train_images": datamodule.split_sizes["train"],
        "prepare_s": prepare_s,
        "prepare_timings": dict(datamodule.timings),
        "fakedetect_img_s": fake,
        "plain_img_s": plain,
        "time_ratio": plain / fake,
        "rates": rates,
        **steps,
        "gpu_util_pct": {loop: gpu.mean(*runs) for loop, runs in spans.items()} if gpu else None,
    }
    if gpu and gpu.error:
        row["gpu_util_error"] = gpu.error
    if device.type == "cuda":
        row["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def row_data_overrides(cfg: DictConfig, own: dict) -> list[str]:
    """A row's data: the bench's own, or the row's `data_config` (e.g. folder) without the bench's root, loader
    and subset; then the row's `data` keys (e.g. {root: DIR, resolution: 224, loader: stream})."""
    mine = own.get("data_config")
    return [
        *_data_overrides(cfg, source=not mine),
        *([f"data={mine}"] if mine else []),
        *(f"data.{k}={'null' if v is None else v}" for k, v in own.get("data", {}).items()),
    ]


def _data_overrides(cfg: DictConfig, limits: bool = True, source: bool = True) -> list[str]:
    """The bench's own data settings carried into a composed config: its cache; unless `source` is off (a row with
    a data config of its own), its root and loader, and their subset unless `limits` is off."""
    keep = (
        "cache_dir",
        *(("root", "loader") if source else ()),
        *(("train_limit", "test_limit") if source and limits else ()),
    )
    return [f"data.{k}={cfg.data[k]}" for k in keep if cfg.data.get(k) is not None] + [
        f"trainer.accelerator={cfg.trainer.accelerator}",
        f"trainer.precision={cfg.trainer.precision}",
    ]


def markdown(result: dict, heading: str = "#") -> str:
    lines = [f"{heading} fakedetect benchmark: {result['machine']}", "", f"Precision: {result['precision']}.", ""]
    if "decode" in result:
        d = result["decode"]
        lines += [
            f"Decode of {d['images']:,} images: cold {d['cold_decode_s']:.1f} s, warm cache load "
            f"{d['warm_load_s']:.2f} s.",
            "",
        ]
    lines += [
        "| model | resolution | batch | fakedetect img/s | plain loop img/s | time ratio (fakedetect / plain) "
        "| peak GPU memory | loader, fit | data preparation | GPU utilisation (fakedetect / plain) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["models"].items():
        mem = f"{r['peak_gpu_mem_gb']:.2f} GiB" if "peak_gpu_mem_gb" in r else "n/a"
        util = r.get("gpu_util_pct") or {}
        shown = " / ".join(f"{util[k]:.0f}%" if util.get(k) is not None else "n/a" for k in ("fakedetect", "plain"))
        workers = f" (workers: {r['num_workers']})" if r.get("loader") not in ("memory", None) else ""
        loader = f"{r['loader']}{workers}, {r['fit']}" if "loader" in r else "n/a"
        prepare = f"{r['prepare_s']:.1f} s" if "prepare_s" in r else "n/a"
        lines.append(
            f"| {name} | {r['resolution']} | {r['batch_size']} | {r['fakedetect_img_s']:.0f} | "
            f"{r['plain_img_s']:.0f} | {r['time_ratio']:.3f} | {mem} | {loader} | {prepare} | "
            f"{shown if util else 'n/a'} |"
        )
    timed = ", ".join(f"{n} {r['timed_steps']}" for n, r in result["models"].items())
    lines += [
        "",
        f"Steps timed per model after warm-up: {timed}; images/s are the median of "
        f"{result['repeats']} alternated runs of each loop. Data preparation (not timed in img/s): the "
        "decode into the cache when cold, else its load; for the stream loader, the files' digests and the "
        "normalization statistics. GPU utilisation: the mean of readings every 0.2 s within the timed steps.",
        "",
    ]
    if "time_to_accuracy" in result:
        lines += [
            f"#{heading} Time to accuracy: experiment={result['time_to_accuracy']['experiment']} "
            f"{' '.join(result['time_to_accuracy']['overrides'])}",
            "",
            accuracy_markdown(result["time_to_accuracy"]),
            "",
        ]
    return "\n".join(lines)


def accuracy_markdown(t: dict) -> str:
    reached = ", ".join(
        f"{float(k):.1%}: " + (f"{v:.1f} s" if v is not None else "not reached") for k, v in t["reached_s"].items()
    )
    return "\n".join(
        [
            f"{t['train_images']:,} training images, tested on {t['test_images']:,} after every epoch (not "
            f"timed); training time to test accuracy {reached}. Whole run {t['wall_s']:.1f} s.",
            "",
            "| epoch | training time (s) | test accuracy |",
            "| --- | --- | --- |",
            *(f"| {p['epoch']} | {p['train_s']:.1f} | {p['test_acc']:.4f} |" for p in t["curve"]),
        ]
    )
