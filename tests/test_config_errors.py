"""Bad config fails while Snakemake builds the DAG: before any job, naming the key and what is allowed."""
from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import yaml

from conftest import REPO, SMALL, TINY_PRESET, snakemake, write_config
from mimic_redundancy.pipeline import config as cfg

CASES = {
    "zero steps": ({"probe": {"steps": 0}},
                   ["config key 'probe.steps'", "0 is less than the minimum of 1", "1..1000"]),
    "probe step beyond steps": ({"metrics": {"probe_steps": [5, 60]}},
                                ["config key 'metrics.probe_steps'", "[60] exceed probe.steps (10)",
                                 "integers from 1 to 10"]),
    "unknown preset": ({"preset": "huge"},
                       ["config key 'preset'", "unknown preset 'huge'", "allowed: tiny"]),
    "empty prompts": ({"prompts": []}, ["config key 'prompts'", "should be non-empty"]),
    "blank prompt": ({"prompts": ["  "]}, ["config key 'prompts.0'", "non-space character"]),
    "non-integer seed": ({"seeds": [0, 1.5]},
                         ["config key 'seeds.1'", "1.5 is not of type 'integer'", "non-negative integer seed"]),
    "unknown top-level key": ({"sampling_steps": 10},
                              ["'sampling_steps' was unexpected", "allowed keys: backbone, compare, depth, device, early_stop, features, hub, inputs, metrics"]),
    "unknown nested key": ({"plot": {"colour": "red"}}, ["config key 'plot'", "'colour' was unexpected",
                                                          "allowed keys: dpi, height, log_y, width"]),
    "bad device": ({"device": "gpu"}, ["config key 'device'", "auto (CUDA when present), cpu, cuda or cuda:N"]),
    "unknown tokenizer": ({"presets": {"tiny": {**TINY_PRESET, "tokenizer": "t5"}}},
                          ["config key 'presets.tiny.tokenizer'", "'builtin' (built by the pipeline, no Hub)"]),
    "pipeline tokenizer without a pretrained backbone": (
        {"presets": {"tiny": {**TINY_PRESET, "tokenizer": "pipeline"}}},
        ["config key 'presets.tiny.tokenizer'", "'pipeline' needs a pretrained backbone repo"]),
    "malformed repo id": ({"presets": {"cosmos": {**TINY_PRESET, "tokenizer": "pipeline",
                                                  "backbone": {"repo": "nvidia/Cosmos 7B"}}}},
                          ["config key 'presets.cosmos.backbone.repo'", "'nvidia/Cosmos 7B' does not match",
                           "Hub repo id, e.g. google-t5/t5-small"]),
    "unknown input source": ({"inputs": {"source": "youtube"}},
                             ["config key 'inputs.source'", "synthetic, lerobot, video_dir"]),
    "episodes neither all nor a list": ({"inputs": {"episodes": "first"}},
                                        ["config key 'inputs.episodes'", "'all' or a list of episode indices"]),
    "checkpoint preset with model keys": ({"presets": {"trained": {"checkpoint": "ckpt", "dim": 64}}},
                                          ["config key 'presets.trained'", "'dim' was unexpected"]),
    "compare with an unknown preset": ({"compare": ["trained", "huge"]},
                                       ["config key 'compare'", "unknown preset 'huge'"]),
    "more shards than samples": ({"shards": 5}, ["config key 'shards': 5 shards for 4 samples; allowed: 1 to 4"]),
    "bootstrap of zero resamples": ({"metrics": {"bootstrap": 0}},
                                    ["config key 'metrics.bootstrap'", "0 is less than the minimum of 1",
                                     "a whole number from 1 to 100000"]),
    "negative bootstrap": ({"metrics": {"bootstrap": -100}}, ["config key 'metrics.bootstrap'", "-100 is less than"]),
    "non-integer bootstrap": ({"metrics": {"bootstrap": 99.5}},
                              ["config key 'metrics.bootstrap'", "99.5 is not of type 'integer'"]),
    # JSON Schema's 'integer' accepts 50.0; the job then crashed in torch.linspace after deleting validate.json
    "integer written as a float": ({"probe": {"steps": 10.0}},
                                   ["config key 'probe.steps'", "10.0 is not of type 'integer'"]),
}


def test_bad_config_fails_before_any_job(workflow):
    """One real Snakemake run: a bad config stops the DAG build, before any job; every message is checked in
    process below (the same validate_config that rules/common.smk calls)."""
    overrides, fragments = CASES["zero steps"]
    config = write_config(workflow, {**SMALL, **overrides})
    result = snakemake(workflow, "--configfile", str(config))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ConfigError" in output and "invalid config" in output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output[-2000:]}"
    assert not (workflow / "results").exists(), "no job may run on a bad config"


# The same check in process (no Snakemake start-up): config.yaml merged with SMALL and the overrides,
# as `--configfile` merges them. Each case: the overrides and fragments the message must contain.
IN_PROCESS = {
    "float steps": ({"probe": {"steps": 50.0}}, ["config key 'probe.steps'", "50.0 is not of type 'integer'"]),
    "float seeds": ({"seeds": [0.0, 1.0]}, ["config key 'seeds.0'", "config key 'seeds.1'",
                                            "1.0 is not of type 'integer'"]),
    "float probe steps": ({"metrics": {"probe_steps": [5.0, 10.0]}},
                          ["config key 'metrics.probe_steps.0'", "5.0 is not of type 'integer'"]),
    "boolean seed": ({"seeds": [True]}, ["config key 'seeds.0'", "True is not of type 'integer'"]),
    "float model seed": ({"model_seed": 1.0}, ["config key 'model_seed'", "1.0 is not of type 'integer'"]),
    "float batch size": ({"train": {"batch_size": 8.0}}, ["config key 'train.batch_size'", "not of type 'integer'"]),
    "float preset dim": ({"presets": {"tiny": {"dim": 512.0}}},
                         ["config key 'presets.tiny.dim'", "512.0 is not of type 'integer'"]),
    "seed beyond int64": ({"seeds": [2 ** 63]}, ["config key 'seeds.0'", "is greater than the maximum of "
                                                 "9223372036854775807", "an int64"]),
    "model seed beyond int64": ({"model_seed": 2 ** 64}, ["config key 'model_seed'", "greater than the maximum"]),
    "huge batch": ({"probe": {"batch_size": 10 ** 6}}, ["config key 'probe.batch_size'", "greater than the maximum"]),
    "reference coarser than the sweep": ({"sweep": {"steps": [1, 50], "reference_steps": 1}},
                                         ["config key 'sweep.reference_steps'"]),
    "reference no finer than the sweep": ({"sweep": {"steps": [1, 10], "reference_steps": 10}},
                                          ["config key 'sweep.reference_steps'", "10 is not larger than the largest "
                                           "sweep.steps (10); allowed: 11 to 10000"]),
    "empty eps list": ({"early_stop": {"eps": []}}, ["config key 'early_stop.eps'", "should be non-empty"]),
    "eps of zero": ({"early_stop": {"eps": [0.1, 0]}},
                    ["config key 'early_stop.eps.1'", "less than or equal to the minimum of 0",
                     "a relative change (> 0)"]),
    "negative eps": ({"early_stop": {"eps": [-0.1]}}, ["config key 'early_stop.eps.0'"]),
    "target fraction of zero": ({"early_stop": {"target_fraction": 0}},
                                ["config key 'early_stop.target_fraction'", "0 < f <= 1"]),
    "target fraction above one": ({"early_stop": {"target_fraction": 1.5}},
                                  ["config key 'early_stop.target_fraction'", "greater than the maximum of 1"]),
    "target step beyond the probe": ({"early_stop": {"target_step": 11}},
                                     ["config key 'early_stop.target_step'", "exceeds probe.steps (10)"]),
    "depth time above one": ({"depth": {"times": [0, 1.5]}},
                             ["config key 'depth.times.1'", "greater than the maximum of 1", "from 0 (clean video)"]),
    "negative depth time": ({"depth": {"times": [0, -0.25]}}, ["config key 'depth.times.1'", "less than the minimum"]),
    "empty depth list": ({"depth": {"times": []}}, ["config key 'depth.times'", "should be non-empty"]),
    "depth times without 0": ({"depth": {"times": [0.5, 1]}},
                              ["config key 'depth.times'", "lacks 0, the reference"]),
    "thresholds that print alike": ({"metrics": {"convergence_thresholds": [0.9, 0.9000001]}},
                                    ["config key 'metrics.convergence_thresholds'", "print alike"]),
    # float64 in the config, float32 in depth.npz and the features, labelled with :g in depth.json and comparison.csv
    "depth times equal in float32": ({"depth": {"times": [0, 1.0e-50]}},
                                     ["config key 'depth.times': 0 and 1e-50 (both '0') are one time once stored as "
                                      "float32", "allowed: times from 0 to 1 that differ in their first 6"]),
    "depth times that print alike": ({"depth": {"times": [0, 0.5, 0.5000001]}},
                                     ["config key 'depth.times': 0.5 and 0.5000001 (both '0.5')"]),
    "depth times equal in float32 but not float64": ({"depth": {"times": [0, 0.5, 0.50000001, 1]}},
                                                     ["config key 'depth.times': 0.5 and 0.50000001 (both '0.5')"]),
    # NaN compares false with every bound, so the schema alone passes it; an infinity fails some bounds only
    "NaN target fraction": ({"early_stop": {"target_fraction": float("nan")}},
                            ["config key 'early_stop.target_fraction': nan is not a finite number", "0 < f <= 1"]),
    "NaN eps": ({"early_stop": {"eps": [0.1, float("nan")]}},
                ["config key 'early_stop.eps.1': nan is not a finite number", "a relative change (> 0)"]),
    "NaN depth time": ({"depth": {"times": [float("nan"), 0]}},
                       ["config key 'depth.times.0': nan is not a finite number", "a video-denoising time"]),
    "infinite plot width": ({"plot": {"width": float("inf")}}, ["config key 'plot.width': inf is not a finite number"]),
    "negative infinite seed": ({"seeds": [0, float("-inf")]}, ["config key 'seeds.1': -inf is not a finite number"]),
    "probe seeds among the training seeds": ({"compare": ["trained"], "seeds": [0, 10003]},
                                             ["config key 'seeds': [10003] are seeds of the training pool of preset "
                                              "'trained' (10000 .. 10063, train.synthetic_samples)"]),
    "zero shards": ({"shards": 0}, ["config key 'shards'", "0 is less than the minimum of 1", "jobs per model stage"]),
    "fractional shards": ({"shards": 2.5}, ["config key 'shards'", "2.5 is not of type 'integer'"]),
    "shards as a word": ({"shards": "four"}, ["config key 'shards'", "'four' is not of type 'integer'"]),
    "shards written as a float": ({"shards": 2.0}, ["config key 'shards'", "2.0 is not of type 'integer'"]),
    "more shards than samples": ({"shards": 9, "seeds": [0, 1, 2, 3]},
                                 ["config key 'shards': 9 shards for 8 samples; allowed: 1 to 8"]),
    "more shards than probe batches": ({"shards": 4, "seeds": [0, 1, 2, 3], "probe": {"batch_size": 4}},
                                       ["config key 'shards': 4 shards, but the 8 samples make 2 probe batches of "
                                        "probe.batch_size 4; allowed: shards up to 2, or a probe.batch_size of at "
                                        "most 2"]),
    "preset missing several keys": ({"presets": {"mine": {"dim": 64}}},
                                    ["config key 'presets.mine': 'backbone' is a required property",
                                     "'depth' is a required property", "'extract_layer' is a required property",
                                     "'tokenizer' is a required property"]),
}


def merged(*overrides: dict) -> dict:
    def merge(a, b):
        a = copy.deepcopy(a)
        for key, value in b.items():
            a[key] = merge(a[key], value) if isinstance(value, dict) and isinstance(a.get(key), dict) else value
        return a

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for override in overrides:
        config = merge(config, override)
    return config


@pytest.mark.parametrize("name", [*CASES, *IN_PROCESS])
def test_bad_config_is_refused_naming_the_key(name):
    overrides, fragments = {**CASES, **IN_PROCESS}[name]
    with pytest.raises(cfg.ConfigError) as error:
        cfg.validate_config(merged(SMALL, overrides))
    for fragment in fragments:
        assert fragment in str(error.value), f"{fragment!r} not in:\n{error.value}"


def test_seeds_and_counts_have_bounds_and_exact_types():
    """Every integer in the schema is bounded above and below (counts, seeds, steps)."""
    schema = yaml.safe_load(cfg.SCHEMA.read_text())
    unbounded = []

    def walk(node, key):
        if isinstance(node, dict):
            if node.get("type") == "integer" and not ("minimum" in node and "maximum" in node):
                unbounded.append(key)
            for k, v in node.items():
                walk(v, f"{key}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")

    walk(schema, "")
    assert not unbounded, unbounded
    assert cfg.validate_config(merged(SMALL, {"seeds": [0, 2 ** 63 - 1]}))["seeds"] == [0, 2 ** 63 - 1]


def test_the_selected_preset_is_not_compared_with_itself(capsys):
    config = cfg.validate_config(merged(SMALL, {"preset": "tiny-t5", "compare": ["tiny-t5", "tiny"]}))
    assert config["compare"] == ["tiny"]
    assert "preset 'tiny-t5' is also listed in 'compare'; it is run once and not compared with itself" \
        in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["tiny", "tiny-t5", "cosmos"])
def test_trained_is_the_selected_presets_checkpoint(preset):
    """`trained` follows `preset`: the train rule of the selected preset writes it, and no other preset is trained."""
    config = cfg.validate_config(merged(SMALL, {"preset": preset, "compare": ["trained"]}))
    assert config["presets"]["trained"] == {"checkpoint": f"results/{preset}/train/seed-0/checkpoint"}
    assert cfg.trained_from(config, "trained") == preset
    assert cfg.trained_presets(config) == [preset]
    assert cfg.feature_preset(config, "trained") == preset  # the selected preset's features, computed once


def test_a_selected_checkpoint_preset_compares_with_nothing_by_default(capsys):
    config = cfg.validate_config(merged(SMALL, {"preset": "checkpoint", "compare": ["trained"]}))
    assert config["compare"] == []
    assert cfg.trained_presets(config) == []
    assert "preset 'checkpoint' is a checkpoint and is not trained here" in capsys.readouterr().err


def test_selecting_trained_itself_is_refused():
    with pytest.raises(cfg.ConfigError, match="preset 'trained' is the checkpoint of the selected preset"):
        cfg.validate_config(merged(SMALL, {"preset": "trained"}))


def test_nan_and_infinity_from_yaml_are_refused_under_every_key():
    """YAML's .nan passes every numeric bound of the schema (it compares false with each): the jobs then wrote
    target_mse null, rows with param nan, or failed after the backbone. Each one is named, before any job."""
    overrides = yaml.safe_load("early_stop: {target_fraction: .nan, eps: [.nan]}\ndepth: {times: [.nan, 0]}\n"
                               "plot: {height: .inf}\nvalidate: {fidelity_tolerance: -.inf}\n")
    with pytest.raises(cfg.ConfigError) as error:
        cfg.validate_config(merged(SMALL, overrides))
    lines = str(error.value).splitlines()[1:]
    keys = ["early_stop.target_fraction", "early_stop.eps.0", "depth.times.0", "plot.height",
            "validate.fidelity_tolerance"]
    assert sorted(line.split("'")[1] for line in lines) == sorted(keys), lines  # one line each, no schema duplicate
    assert all("is not a finite number" in line and "allowed: a finite number" in line for line in lines), lines


def test_depth_times_that_differ_in_six_digits_are_accepted():
    config = cfg.validate_config(merged(SMALL, {"depth": {"times": [0, 0.5, 0.50001, 1.0e-5]}}))
    assert config["depth"]["times"] == [0, 0.5, 0.50001, 1.0e-5]


def write_episodes(folder, rows: int):
    """A video_dir table of `rows` episodes (the DAG build reads only the table, not the videos)."""
    folder.mkdir(parents=True)
    (folder / "episodes.csv").write_text("video,prompt,joint_state\n" +
                                         "".join(f"ep{i}.mp4,pick it up,0 0\n" for i in range(rows)))
    return folder


@pytest.mark.parametrize("episodes", ["all", [0, 1, 2, 3]])
def test_video_dir_shards_are_checked_against_the_probe_batches_at_dag_build(tmp_path, episodes):
    """video_dir: 2 seeds x 4 episodes = 8 samples, one probe batch of 8. Both feature shards, the gather and
    validate used to run before the probe shard refused; the DAG build now counts the table's rows."""
    inputs = {"source": "video_dir", "video_dir": str(write_episodes(tmp_path / "videos", 4)), "episodes": episodes}
    config = merged(SMALL, {"inputs": inputs, "seeds": [0, 1], "probe": {"batch_size": 8}, "shards": 2})
    with pytest.raises(cfg.ConfigError) as error:
        cfg.validate_config(copy.deepcopy(config))
    assert "config key 'shards': 2 shards, but the 8 samples make 1 probe batch of probe.batch_size 8; allowed: " \
           "shards up to 1, or a probe.batch_size of at most 4" in str(error.value), error.value
    config["probe"]["batch_size"] = 4  # two batches: one per shard
    assert cfg.validate_config(config)["shards"] == 2


def test_video_dir_without_its_table_is_left_to_the_job(tmp_path):
    """No table yet: the DAG build cannot count, and the features job names the missing file."""
    inputs = {"source": "video_dir", "video_dir": str(tmp_path / "missing")}
    assert cfg.validate_config(merged(SMALL, {"inputs": inputs, "shards": 2}))["shards"] == 2


# -- docs/troubleshooting.md's messages, checked against the real ones ------------------------------------------
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
# Each verbatim message of the guide (its "Config errors" section: the spans that start `config key` or `config
# note`) -> the overrides of config.yaml that produce it. `...` in a message stands for any text.
DOCUMENTED = {
    "config key 'probe.steps': 50.0 is not of type 'integer'": {"probe": {"steps": 50.0}},
    "config key 'seeds.0': ... is greater than the maximum of 9223372036854775807": {"seeds": [2 ** 63]},
    "config key 'sweep.reference_steps': 50 is not larger than the largest sweep.steps (50); allowed: 51 to 10000":
        {"sweep": {"reference_steps": 50}},
    "config key 'metrics.probe_steps': [60] exceed probe.steps (50)": {"metrics": {"probe_steps": [5, 60]}},
    "config key 'presets.mine': 'depth' is a required property": {"presets": {"mine": {"dim": 64}}},
    "config key 'preset': unknown preset": {"preset": "huge"},
    "config key 'early_stop.target_fraction': nan is not a finite number":
        yaml.safe_load("early_stop: {target_fraction: .nan}"),
    "config key 'depth.times': 0.5 and 0.5000001 (both '0.5') are one time once stored as float32":
        {"depth": {"times": [0, 0.5, 0.5000001]}},
    "config key 'shards': 2 shards, but the 8 samples make 1 probe batch of probe.batch_size 8; allowed: shards up "
    "to 1, or a probe.batch_size of at most 4": {"inputs": {"source": "video_dir", "episodes": [0, 1, 2, 3]},
                                                  "seeds": [0, 1], "shards": 2},
    "config note: preset 'tiny' is also listed in 'compare'": {"compare": ["tiny"]},
    "config note: preset 'checkpoint' is a checkpoint and is not trained here": {"preset": "checkpoint"},
    "config key 'preset': preset 'trained' is the checkpoint of the selected preset": {"preset": "trained"},
    "config key 'rollout.margin': '1.0e9' is not of type 'number': YAML 1.1 (PyYAML, which reads the config) takes "
    "1.0e9 for text (a number in exponent form needs a decimal point and a signed exponent); write 1.0e+9":
        yaml.safe_load("rollout: {margin: 1.0e9}"),
    "config key 'inputs.episodes': [0, 0] has non-unique elements: 0 listed more than once; allowed: each value once":
        {"inputs": {"episodes": [0, 0]}},
}


def guide_section(heading: str) -> str:
    """The text of one `## ` section of the guide, without its code blocks (commands)."""
    section = TROUBLESHOOTING.read_text().split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.sub(r"```.*?```", "", section, flags=re.S)


def documented_config_messages() -> list[str]:
    return [m for m in re.findall(r"`([^`]+)`", guide_section("Config errors"))
            if m.startswith(("config key ", "config note: "))]


def documented_table_messages(heading: str) -> list[str]:
    """The messages of a section's tables: the code span that opens each row's first cell (`| `message` | fix |`)."""
    return re.findall(r"^\| `([^`]+)`[^|]*\|", guide_section(heading), flags=re.M)


def matches(documented: str, real: str) -> bool:
    """Whether the real message holds the documented one verbatim, `...` standing for any text and a placeholder
    such as `<preset>` for one word (no spaces)."""
    def pattern(text: str) -> str:
        return r"\S+?".join(re.escape(part) for part in re.split(r"<[a-z-]+>", text))

    return re.search(".*?".join(pattern(part.strip()) for part in documented.split("...")), real) is not None


def test_the_troubleshooting_guides_config_messages_are_the_real_ones(capsys):
    documented = documented_config_messages()
    assert sorted(documented) == sorted(DOCUMENTED), "a message was added to or dropped from the guide: list it here"
    wrong = []
    for message, overrides in DOCUMENTED.items():
        try:
            cfg.validate_config(merged(overrides))
            real = capsys.readouterr().err
        except cfg.ConfigError as error:
            real = str(error)
        if not matches(message, real):
            wrong.append(f"documented: {message}\nreal:       {real}")
    assert not wrong, "\n\n".join(wrong)


def test_the_troubleshooting_guides_damaged_file_message_is_the_real_one(tmp_path, monkeypatch):
    from mimic_redundancy.core.io import InputFileError, load_probe

    block = TROUBLESHOOTING.read_text().split("\n```\nInputFileError: ", 1)[1].split("\n```", 1)[0]
    documented = "InputFileError: " + " ".join(block.splitlines())
    monkeypatch.chdir(tmp_path)  # the stages see paths relative to the workflow folder
    path = tmp_path / "results/tiny/probe.npz"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        np.savez(f, trajectory=np.zeros((3, 2, 4, 5), np.float32))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputFileError) as error:
        load_probe("results/tiny/probe.npz")
    assert f"{type(error.value).__name__}: {error.value}" == documented
