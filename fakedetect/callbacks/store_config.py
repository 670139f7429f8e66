"""The run's resolved config in every checkpoint it writes (`fakedetect.utils.checkpoint.CONFIG_KEY`), so that eval,
predict, gradcam and export rebuild the detector from the checkpoint alone."""

from __future__ import annotations

import lightning as L

from fakedetect.utils.checkpoint import CONFIG_KEY


class StoreConfig(L.Callback):
    def __init__(self, config: dict) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
