"""A damaged file a stage reads is named, with what is wrong and the command that rebuilds it; the README's and
the troubleshooting guide's commands run as written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mimic_redundancy.io import PROBE_ARRAYS, InputFileError, load_npz, load_probe, read_json, rebuild_command
from mimic_redundancy.metrics import read_csv, write_csv


def test_the_rebuild_command_puts_the_target_before_forcerun():
    assert rebuild_command("results/tiny/probe.npz") == \
        "snakemake --profile profiles/local results/tiny/probe.npz --forcerun probe"
    assert rebuild_command("/abs/work/results/tiny-t5/train/summary.json").endswith(
        "results/tiny-t5/train/summary.json --forcerun train")
    assert rebuild_command("elsewhere/file.csv") == "snakemake --profile profiles/local --force elsewhere/file.csv"


def damaged(kind: str, path):
    """Write a damaged file of `kind` at `path`."""
    if kind == "truncated npz":
        with open(path, "wb") as f:
            np.savez(f, trajectory=np.zeros((3, 2, 4, 5), np.float32))
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "npz of another kind":
        with open(path, "wb") as f:
            np.savez(f, steps=np.arange(3))
    elif kind == "missing npz":
        pass
    elif kind == "truncated json":
        path.write_text('{"steps": 10, "conv')
    elif kind == "json list":
        path.write_text("[1, 2]")
    elif kind == "truncated csv":
        write_csv(path, [{"step": s, "mse_vs_final": 0.5} for s in range(1, 5)])
        path.write_text(path.read_text()[:-3])  # "4,0.5" -> "4,0", a number still
    elif kind == "csv row cut short":
        path.write_text("step,mse_vs_final\n1,0.5\n2\n")
    elif kind == "empty csv":
        path.write_text("")
    elif kind == "csv with text":
        path.write_text("step,mse_vs_final\n1,abc\n")


CASES = {  # kind: (file name under results/tiny/, reader, what the message must say)
    "truncated npz": ("probe.npz", lambda p: load_probe(p), "not a readable NPZ (BadZipFile"),
    "npz of another kind": ("probe.npz", lambda p: load_probe(p), "missing arrays"),
    "missing npz": ("sweep.npz", lambda p: load_npz(p, PROBE_ARRAYS), "no such file"),
    "truncated json": ("convergence.json", read_json, "not valid JSON"),
    "json list": ("backbone.json", read_json, "holds a JSON list"),
    "truncated csv": ("metrics.csv", read_csv, "the file was cut short"),
    "csv row cut short": ("metrics.csv", read_csv, "line 3 does not have the header's 2 cells"),
    "empty csv": ("sweep.csv", read_csv, "the file is empty"),
    "csv with text": ("metrics.csv", read_csv, "a cell is not a number"),
}
RULES = {"probe.npz": "probe", "sweep.npz": "sweep", "convergence.json": "metrics", "backbone.json": "backbone_metrics",
         "metrics.csv": "metrics", "sweep.csv": "sweep_metrics"}


@pytest.mark.parametrize("kind", CASES)
def test_a_damaged_file_is_named_with_the_fix(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)  # stages see paths relative to the workflow folder, as Snakemake gives them
    name, reader, problem = CASES[kind]
    path = tmp_path / "results" / "tiny" / name
    path.parent.mkdir(parents=True)
    damaged(kind, path)
    with pytest.raises(InputFileError) as error:
        reader(f"results/tiny/{name}")
    message = str(error.value)
    assert message.startswith(f"results/tiny/{name}: ") and problem in message, message
    assert message.endswith(f"Rebuild it: snakemake --profile profiles/local results/tiny/{name} "
                            f"--forcerun {RULES[name]}"), message
    json.dumps(message)  # one line of plain text
