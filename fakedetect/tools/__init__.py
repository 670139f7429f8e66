"""The dataset commands' back-ends: `audit/` (audit a dataset before training on it), `download.py` (fetch CIFAKE,
rebuild the packaged sample) and `pack.py` (a dataset as LitData chunks)."""
