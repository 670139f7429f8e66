"""Every way batches reach the model, one module per `data.loader`, each registering its `Loader` in `LOADERS`;
`base.py` says what a loader is."""

# isort: off
# registered in this order, the order `data.loader`'s choices are listed in
from fakedetect.data.loaders import memory, cached, stream, litdata  # noqa: F401

# isort: on
from fakedetect.data.loaders.base import LOADERS, Loader, Where, register

__all__ = ["LOADERS", "Loader", "Where", "register"]
