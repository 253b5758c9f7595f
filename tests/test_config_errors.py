"""Bad config fails while Snakemake builds the DAG: before any job, naming the key and what is allowed."""
from __future__ import annotations

import pytest

from conftest import SMALL, snakemake, write_config

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
                              ["'sampling_steps' was unexpected", "allowed keys: backbone, compare, device, hub, inputs, metrics"]),
    "unknown nested key": ({"plot": {"colour": "red"}}, ["config key 'plot'", "'colour' was unexpected",
                                                          "allowed keys: dpi, height, log_y, width"]),
    "bad device": ({"device": "gpu"}, ["config key 'device'", "auto (CUDA when present), cpu, cuda or cuda:N"]),
    "unknown tokenizer": ({"presets": {"tiny": {"dim": 512, "depth": 3, "extract_layer": 1, "backbone": "tiny-random",
                                                "tokenizer": "t5"}}},
                          ["config key 'presets.tiny.tokenizer'", "'builtin' (built by the pipeline, no Hub)"]),
    "pipeline tokenizer without a pretrained backbone": (
        {"presets": {"tiny": {"dim": 512, "depth": 3, "extract_layer": 1, "backbone": "tiny-random",
                              "tokenizer": "pipeline"}}},
        ["config key 'presets.tiny.tokenizer'", "'pipeline' needs a pretrained backbone repo"]),
    "malformed repo id": ({"presets": {"cosmos": {"dim": 512, "depth": 3, "extract_layer": 1, "tokenizer": "pipeline",
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
}


@pytest.mark.parametrize("name", CASES)
def test_bad_config_fails_before_any_job(workflow, name):
    overrides, fragments = CASES[name]
    config = write_config(workflow, {**SMALL, **overrides})
    result = snakemake(workflow, "--configfile", str(config))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ConfigError" in output and "invalid config" in output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output[-2000:]}"
    assert not (workflow / "results").exists(), "no job may run on a bad config"
