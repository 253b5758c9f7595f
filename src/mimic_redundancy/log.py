"""Send a stage's logging, warnings, progress and any fatal error to its Snakemake log file."""
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
    previous_hook = sys.excepthook

    def log_then_raise(kind, error, traceback):
        # the error lands in the rule's log too, not only in Snakemake's console output
        root.critical("stage failed: %s: %s", kind.__name__, error, exc_info=(kind, error, traceback))
        previous_hook(kind, error, traceback)

    sys.excepthook = log_then_raise
    return logging.getLogger("mimic_redundancy")
