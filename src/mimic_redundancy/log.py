"""Send a stage's logging, warnings and progress to its Snakemake log file."""
from __future__ import annotations

import logging
import sys


def setup_log(path: str | None) -> logging.Logger:
    handler = logging.FileHandler(path, mode="w") if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return logging.getLogger("mimic_redundancy")
