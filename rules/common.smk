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

# Slurm: see a job that `scancel` killed as failed instead of polling it forever (slurm_compat.py)
from mimic_redundancy.slurm_compat import patch_slurm_status_query

patch_slurm_status_query()


wildcard_constraints:
    preset="|".join(map(re.escape, config["presets"])),


def code(*modules):
    """Package modules a stage runs: inputs, so editing one reruns the stages that use it."""
    return [f"src/mimic_redundancy/{m}.py" for m in modules]


MODEL_CODE = code("stages", "hub", "model", "tokenizer", "probe", "io", "readers", "lerobot", "samples")


def data_files(wildcards):
    """inputs.source video_dir: the table and the videos it names (those that exist: a missing one is
    reported by the job, naming the table row), so editing the data reruns the model stages."""
    inputs = config["inputs"]
    if inputs["source"] != "video_dir":
        return []
    folder = Path(inputs["video_dir"])
    table = folder / "episodes.csv"
    if not table.is_file():
        return []
    import csv

    with open(table, newline="") as f:
        names = [row.get("video") or "" for row in csv.DictReader(f)]
    return [str(table)] + sorted({str(folder / n) for n in names if n and (folder / n).is_file()})


def checkpoint_files(wildcards):
    return cfg.checkpoint_files(config, wildcards.preset)


def results(preset, name):
    return f"results/{preset}/{name}"


def run_presets():
    """The selected preset and those compared with it."""
    return [config["preset"], *config["compare"]]


def trained_from(preset):
    """The preset whose training writes this checkpoint preset's folder, or None if none does."""
    folder = config["presets"][preset].get("checkpoint", "")
    match = re.fullmatch(r"results/([^/]+)/train/checkpoint/?", folder)
    return match.group(1) if match else None


def all_targets():
    targets = [t for p in run_presets() for t in final_targets(p)]
    for preset in run_presets():
        source = trained_from(preset)
        if source:
            targets += [results(source, f"figures/train_loss.{ext}") for ext in ["png", "svg"]]
    if config["compare"]:
        targets += ["results/compare/comparison.csv", "results/compare/figures/comparison.png"]
    return targets


def compare_inputs(wildcards):
    """Named inputs of the comparison, each compared preset's NPZ, tables and summaries."""
    files = {}
    for i, preset in enumerate(run_presets()):
        files.update({
            f"probe_{i}": results(preset, "probe.npz"),
            f"metrics_{i}": results(preset, "metrics.csv"),
            f"thresholds_{i}": results(preset, "convergence.csv"),
            f"summary_{i}": results(preset, "convergence.json"),
            f"sweep_{i}": results(preset, "sweep.csv"),
            f"backbone_summary_{i}": results(preset, "backbone.json"),
        })
    return files


def final_targets(preset):
    tables = ["metrics.csv", "early_exit.csv", "convergence.csv", "convergence_by_part.csv", "convergence.json",
              "sweep.csv", "backbone.csv", "backbone.json"]
    figures = [f"figures/{name}.{ext}" for name in ["convergence", "heatmaps", "sweep", "backbone"]
               for ext in ["png", "svg"]]
    return [results(preset, name) for name in ["validate.json", "probe.npz", *tables, *figures]]


def print_summary(presets):
    for preset in presets:
        _print_summary(preset)
    if config["compare"]:
        print(f"\nside by side: results/compare/figures/comparison.png, results/compare/comparison.csv")


def _print_summary(preset):
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
        f"(preset {preset}, {summary['samples']})"
    )
