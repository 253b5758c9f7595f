# Helpers of the DAG: config validation, per-stage settings (rule params), target paths.
import json
import os
import shlex
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from mimic_redundancy.core.hub import offline_env
from mimic_redundancy.pipeline import config as cfg

cfg.validate_config(config)
# a read-only results folder stops the DAG build, naming it (Snakemake would refuse each job's outputs in turn)
READ_ONLY = cfg.read_only_problem("results")
if READ_ONLY:
    raise WorkflowError(READ_ONLY)

# Every job is offline and shares one Hub cache (Slurm jobs inherit this environment and
# re-read this file); only prefetch goes online, by itself.
os.environ.update(offline_env(cfg.hub_cache(config)))
# the run's --configfile files, for the rebuild commands a job prints (core/io.rebuild_command); a Slurm job re-reads
# this file with the same --configfile, so it sets the same value
from mimic_redundancy.core.io import CONFIGFILES_ENV

os.environ[CONFIGFILES_ENV] = shlex.join(str(f) for f in workflow.overwrite_configfiles)

# Slurm: see a job that `scancel` killed as failed instead of polling it forever (slurm_compat.py)
from mimic_redundancy.pipeline.slurm_compat import patch_slurm_status_query

patch_slurm_status_query()


wildcard_constraints:
    preset="|".join(map(re.escape, cfg.preset_names(config))),
    shard=r"\d+-of-\d+",
    seed=r"\d+",
    policy=r"\d+",
    k=r"\d+",
    set="dev|test",

# config `shards` > 1: the sharded stages (features, probe, sweep, backbone, depth_features) run one job per
# contiguous range of samples (depth_features: of its time-major rows), each writing under
# results/{preset}/shards/<i-of-n>/, and rules/gather.smk (depth_features: rules/depth.smk) joins them into the
# files an unsharded run writes. With 1, those jobs write the files themselves (no gather job).
SHARDED = cfg.sharded(config)


def sharded(name):
    """Where a sharded stage's jobs write results/{preset}/<name> (also its log and benchmark)."""
    return results("{preset}", f"shards/{{shard}}/{name}" if SHARDED else name)


def shards_of(stage, name):
    """Every shard's copy of results/{preset}/<name>: the inputs of its gather rule."""
    return lambda w: [results(w.preset, f"shards/{item}/{name}") for item in cfg.shard_items(config, stage)]


def code(*modules):
    """Package modules a stage runs (by floor: 'core/io'): inputs, so editing one reruns the stages that use it."""
    paths = [f"src/mimic_redundancy/{m}.py" for m in modules]
    missing = [p for p in paths if not (Path(workflow.basedir) / p).is_file()]
    if missing:
        raise WorkflowError(f"rules name package modules that do not exist: {missing} (src/mimic_redundancy/<floor>/...)")
    return paths


# what every model stage runs; the backbone stages also run BACKBONE_CODE, the head-only stages HEAD_CODE
MODEL_CODE = code("pipeline/stages", "core/numerics", "core/hub", "core/io", "data/samples", "model/model",
                  "model/presets", "model/checkpoints", "model/features", "model/sampling")
BACKBONE_CODE = MODEL_CODE + code("data/tokenizer", "data/readers", "data/sources", "data/lerobot", "analysis/probe")
HEAD_CODE = MODEL_CODE + code("analysis/probe")


def data_files(wildcards):
    """inputs.source video_dir: the table and the videos it names (those that exist: a missing one is
    reported by the job, naming the table row), so editing the data reruns the model stages; demos: the demos
    stage's summary (written after its dataset)."""
    if config["inputs"]["source"] == "demos":
        return ["results/demos/summary.json"]
    table = cfg.video_dir_table(config)
    if table is None or not table.is_file():
        return []
    folder = table.parent
    import csv

    with open(table, newline="", encoding="utf-8-sig") as f:
        names = [row.get("video") or "" for row in csv.DictReader(f)]
    return [str(table)] + sorted({str(folder / n) for n in names if n and (folder / n).is_file()})


def checkpoint_files(wildcards):
    return cfg.checkpoint_files(config, wildcards.preset)


def features_of(kind):
    """The features file a head stage reads: its preset's, or (a checkpoint trained here) its source's."""
    return lambda w: results(cfg.feature_preset(config, w.preset), f"features/{kind}.safetensors")


def depth_features_of(wildcards):
    """The depth features a preset's depth stage reads: its own, or (a checkpoint trained here) its source's."""
    return results(cfg.feature_preset(config, wildcards.preset), "depth/features.safetensors")


def manifest_of(wildcards):
    """The Hub manifest a backbone stage reads (a checkpoint trained here uses its source preset's)."""
    return results(cfg.feature_preset(config, wildcards.preset), "prefetch.json")


def backbone_data(wildcards):
    """What the backbone stages read: the data files, and a checkpoint trained elsewhere (its backbone)."""
    own = cfg.feature_preset(config, wildcards.preset) == wildcards.preset
    return data_files(wildcards) + (checkpoint_files(wildcards) if own else [])


def results(preset, name):
    return f"results/{preset}/{name}"


def run_presets():
    """The selected preset and those compared with it."""
    return cfg.run_presets(config)


def all_targets():
    targets = [t for p in run_presets() for t in final_targets(p)]
    for preset in run_presets():
        source = cfg.trained_from(config, preset)
        if source:
            targets += [results(source, f"figures/train_loss.{ext}") for ext in ["png", "svg"]]
    if len(run_presets()) > 1:
        targets += ["results/compare/comparison.csv", "results/compare/figures/comparison.png"]
    for preset in cfg.rollout_presets(config):  # the closed loop (rules/sim.smk)
        targets += [results(preset, name) for name in ["rollout.npz", "rollout.csv", "rollout.json",
                                                       "figures/rollout.png", "figures/rollout.svg",
                                                       "figures/pareto.png", "figures/pareto.svg",
                                                       "rollout/videos.json"]]
        targets += [results(preset, f"rollout-vs-K{k}.json") for k in config["rollout"]["also_against"]]
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
            f"early_stop_{i}": results(preset, "early_stop.csv"),
            f"early_stop_summary_{i}": results(preset, "early_stop.json"),
            f"depth_{i}": results(preset, "depth.csv"),
            f"depth_summary_{i}": results(preset, "depth.json"),
        })
    return files


def final_targets(preset):
    tables = ["metrics.csv", "early_exit.csv", "convergence.csv", "convergence_by_part.csv", "mse_by_part.csv",
              "convergence.json", "sweep.csv", "backbone.csv", "backbone.json", "early_stop.csv", "early_stop.json",
              "depth.csv", "depth.json"]
    figures = [f"figures/{name}.{ext}" for name in ["convergence", "heatmaps", "sweep", "backbone", "early_stop", "depth"]
               for ext in ["png", "svg"]]
    return [results(preset, name) for name in ["validate.json", "probe.npz", *tables, *figures]]


def print_summary(presets):
    for preset in presets:
        _print_summary(preset)
    for preset in cfg.rollout_presets(config):
        path = Path(results(preset, "rollout.json"))
        if path.exists():
            rollout = json.loads(path.read_text())
            print(f"\nclosed loop, preset {preset}: {results(preset, 'figures/rollout.png')}")
            for task, answer in rollout["tasks"].items():
                print(f"  {task}: {answer['decision']}")
    if len(presets) > 1:
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


# -- the closed loop's replicated policies (rules/sim.smk) ------------------------------------------------------------
def policy_checkpoint_files(wildcards):
    """One policy's checkpoint files (train.seeds: results/<source>/train/seed-<policy>/checkpoint)."""
    folder = cfg.policy_checkpoint(config, wildcards.preset, int(wildcards.policy))
    return cfg.checkpoint_files(config, wildcards.preset, folder)


def policy_rollout(name):
    """Where one policy's rollout job writes (results/<preset>/rollout/policy-<seed>/, per shard with `shards` > 1)."""
    return results("{preset}", f"rollout/policy-{{policy}}/{'shards/{shard}/' if SHARDED else ''}{name}")


def policy_rollouts(wildcards):
    """Every policy's rollout files, per shard with `shards` > 1: what gather_rollout joins, policy by policy."""
    items = [f"shards/{item}/" for item in cfg.shard_items(config, "rollout")] if SHARDED else [""]
    return [results(wildcards.preset, f"rollout/policy-{seed}/{item}rollout.npz")
            for seed in cfg.policy_seeds(config, wildcards.preset) for item in items]
