"""The test split scored once, by Lightning's own test loop: every image's P(FAKE), label, source and duplicate mark
travel with the batch, so the per-source and deduplicated figures come from the same pass as `test/acc`."""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from fakedetect.data.batch import Batch
from fakedetect.metrics.scores import Scores, dedup_metrics
from fakedetect.modules.detector import Detector
from fakedetect.reporting.per_source import flat_metrics, markdown, source_rows

log = logging.getLogger(__name__)

# sees every scored test batch: its raw images where the loader left them (on the device for the memory loader),
# P(FAKE) and labels on the CPU; so a report copies only the few images it shows, never the split
Keep = Callable[[Tensor, Tensor, Tensor], None]


def _gathered(parts: list[Tensor]) -> Tensor:
    """The parts of every process, concatenated (processes may hold different numbers of images)."""
    local = torch.cat(parts)
    if dist.is_available() and dist.is_initialized():
        local = torch.cat(gather_all_tensors(local))
    return local.cpu()


class TestScores(L.Callback):
    """Collects the test loop's scores of a Detector and logs, beside the module's own test metrics, the
    deduplicated figures (`test/acc_dedup`, ...) and one row per source (`test/source/<name>/<metric>`).

    After `trainer.test`: `scores` (every test image of every process), `rows` (the per-source table, `test_set`
    naming it) and `metrics` (what it logged)."""

    def __init__(self, test_set: str = "test", keep: Keep | None = None) -> None:
        self.test_set, self.keep = test_set, keep
        self._parts: list[list[Tensor]] = []
        self.scores: Scores | None = None
        self.rows: list[dict] = []
        self.metrics: dict[str, float] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._parts = [[] for _ in Scores._fields]

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: object,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Tensor):
            raise TypeError(f"TestScores needs a test step that returns P(FAKE) as a tensor, got {type(outputs)}")
        for part, values in zip(self._parts, (outputs, batch.labels, batch.sources, batch.duplicates), strict=True):
            part.append(values.detach())
        if self.keep is not None:
            self.keep(batch.images, outputs.detach().cpu(), batch.labels.cpu())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, Detector):
            raise TypeError(f"TestScores scores a fakedetect Detector, not a {type(pl_module).__name__}")
        if not self._parts[0]:
            return
        self.scores = scores = Scores(*(_gathered(part) for part in self._parts))
        self._parts = []
        threshold = pl_module.decision_threshold
        metrics = dedup_metrics(scores, threshold)
        groups = getattr(getattr(trainer, "datamodule", None), "duplicate_groups", None)
        if groups is not None:
            metrics["test/n_dedup_groups"] = float(groups)
        if metrics["test/n_dedup_removed"]:
            log.info(
                "test without the %d test images byte-identical to train or val files: %s",
                int(metrics["test/n_dedup_removed"]),
                {k: round(v, 4) for k, v in metrics.items()},
            )
        if "test/acc_dedup" not in metrics:
            log.warning("every test image has a byte-identical copy in train or val: no test/acc_dedup")
        names = list(getattr(getattr(trainer, "datamodule", None), "source_names", []))
        self.rows = source_rows(scores, names, threshold, self.test_set)
        log.info("per source:\n%s", markdown(self.rows))
        metrics.update(flat_metrics(self.rows))
        self.metrics = metrics
        pl_module.log_dict(metrics, sync_dist=True)  # equal on every process: no warning, the same values
