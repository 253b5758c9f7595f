# Helpers of the DAG: config validation, per-stage settings (rule params), target paths.
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from mimic_redundancy import config as cfg
from mimic_redundancy.hub import offline_env

cfg.validate_config(config)

# Every job is offline and shares one Hub cache (Slurm jobs inherit this environment and
# re-read this file); only prefetch goes online, by itself.
os.environ.update(offline_env(config["hub"]["cache_dir"]))


wildcard_constraints:
    preset="|".join(map(re.escape, config["presets"])),


def results(preset, name):
    return f"results/{preset}/{name}"


def final_targets(preset):
    return [
        results(preset, "validate.json"),
        results(preset, "probe.npz"),
        results(preset, "metrics.csv"),
        results(preset, "convergence.json"),
        results(preset, "figures/convergence.png"),
        results(preset, "figures/convergence.svg"),
    ]


def print_summary(preset):
    summary_path = Path(results(preset, "convergence.json"))
    if not summary_path.exists():
        return
    summary = json.loads(summary_path.read_text())
    step = summary["convergence_step"]
    reached = f"step {step} of {summary['steps']}" if step is not None else "not reached"
    print(
        f"\nfigure: {results(preset, 'figures/convergence.png')} (and .svg)"
        f"\ntable:  {results(preset, 'metrics.csv')}"
        f"\n{summary['convergence_threshold']:.0%} convergence: {reached} "
        f"(preset {preset}, N={summary['n_samples']} samples)"
    )
