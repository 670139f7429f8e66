"""`python -m fakedetect.decode_bench root=FOLDER [mode=speed|cache|generate]`: how fast images decode, and how
much memory caching a folder takes (fakedetect/benchmarks/decode.py). Results go to
`<output_dir>/decode_bench.json` and the log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from fakedetect.benchmarks.decode import cache_memory, decode_speed, generate
from fakedetect.data.decode import check_fit
from fakedetect.utils.app import command
from fakedetect.utils.errors import ConfigError
from fakedetect.utils.signals import doing

log = logging.getLogger(__name__)


@command("decode_bench")
def main(cfg: DictConfig) -> None:
    check_fit(cfg.fit, "fit")
    if cfg.mode == "speed":
        result = decode_speed(cfg.root, cfg.resolution, cfg.fit, cfg.repeats)
    elif cfg.mode == "cache":
        result = cache_memory(cfg.root, cfg.resolution, cfg.fit, cfg.workers)
    elif cfg.mode == "generate":
        with doing(f"writing {cfg.count} JPEGs into {cfg.root}", f"{cfg.root} holds part of them"):
            result = generate(cfg.root, cfg.count, cfg.size, cfg.workers or 1)
    else:
        raise ConfigError(f"mode={cfg.mode} is not a mode; use speed, cache or generate")
    result["mode"] = cfg.mode
    out = Path(cfg.output_dir) / "decode_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log.info("%s", json.dumps(result))


if __name__ == "__main__":
    main()
