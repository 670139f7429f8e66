"""`python -m fakedetect.bench`: fakedetect's loop against a plain PyTorch loop, and time to accuracy
(fakedetect/benchmarks/throughput.py); `suite=gpu stage=K` runs a stage of the GPU suite
(fakedetect/benchmarks/suite.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fakedetect.benchmarks.suite import run_suite
from fakedetect.benchmarks.throughput import bench, markdown
from fakedetect.utils.app import command
from fakedetect.utils.signals import doing


@command("bench")
def main(cfg: DictConfig) -> None:
    if cfg.get("suite"):
        run_suite(cfg)
        return
    folder = Path(cfg.report_dir or cfg.paths.output_dir)
    with doing(f"benchmarking {', '.join(cfg.models)}", f"no bench report was written to {folder}"):
        result = bench(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "bench-" + ("gpu" if "CPU" not in result["machine"] else "cpu")
    (folder / f"{stem}.json").write_text(
        json.dumps({**result, "config": OmegaConf.to_container(cfg.data)}, indent=2, default=str)
    )
    (folder / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
