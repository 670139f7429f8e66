"""The one place that quiets what libraries print on a run's console and fakedetect cannot fix at its cause.

Called by the command decorator (fakedetect/utils/app.py) when a command starts, never at import: a library user's
warnings stay theirs. Only known lines are dropped, matched by their text, so a new warning still shows.
"""

from __future__ import annotations

import logging
import warnings

# (category, start of the message) of library warnings that are no fault of a run's config
LIBRARY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # Lightning 2.6's pytree helper still builds torch's deprecated LeafSpec
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # the LPIPS loss's frozen trunk stays in eval mode on purpose (all 41 such modules of an ae_transfer fit)
    (UserWarning, r"Found \d+ module\(s\) in eval mode at the start of training"),
)
# Lightning's info lines that advertise other products or list accelerators (metrics.json records the machine)
LIGHTNING_NOISE = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:")
LIGHTNING_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LIGHTNING_NOISE)


def quiet_console() -> None:
    """Drop the library lines listed above; idempotent, so a job may call it again in a launcher's process."""
    for category, message in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logger = logging.getLogger(LIGHTNING_LOGGER)
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())
