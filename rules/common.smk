# Helpers of the DAG: config validation, per-stage settings (rule params), target paths.
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from mimic_redundancy import config as cfg

cfg.validate_config(config)


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
