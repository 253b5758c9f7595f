"""Send a stage's logging, warnings, progress and any fatal error to its Snakemake log file."""
from __future__ import annotations

import atexit
import logging
import resource
import sys

PEAK_RSS = "peak RSS of this job: %.1f MB"  # the last line of every stage's log (make bench reads it)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (the kernel's high-water mark; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    atexit.register(lambda: root.info(PEAK_RSS, peak_rss_mb()))  # exact even for jobs too short to sample
    return logging.getLogger("mimic_redundancy")
