"""Lightning callbacks, one concern a file: what `train` always adds (`finite`, which stops a diverged fit,
`store_config`, `log_interval`, and `test_scores`, which scores the test split once), what `conf/callbacks/` may
list (`figures`, `ema`), and the bench's timers (`throughput`). The one callback elsewhere is the Optuna trial's pruning
(`fakedetect/search/pruning.py`), which belongs to the sweep."""
