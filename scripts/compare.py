"""Snakemake adapter: rule compare -> mimic_redundancy.report.compare.compare."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402
from mimic_redundancy.report.compare import compare  # noqa: E402

setup_log(snakemake.log[0])
presets = snakemake.params.settings["presets"]
kinds = ["probe", "metrics", "thresholds", "summary", "sweep", "backbone_summary", "early_stop", "early_stop_summary",
         "depth", "depth_summary"]
files = {p: {k: snakemake.input[f"{k}_{i}"] for k in kinds} for i, p in enumerate(presets)}
compare(presets, files, snakemake.params.style, snakemake.output.table, snakemake.output.png, snakemake.output.svg,
        snakemake.params.settings["bootstrap"])
