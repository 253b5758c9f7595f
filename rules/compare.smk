# The selected preset and the 'compare' presets side by side (same inputs): from their tables alone.
localrules:
    compare,


def compare_inputs(wildcards):
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


rule compare:
    input:
        unpack(compare_inputs),
        code=code("compare", "plots", "metrics", "io"),
    output:
        table=report("results/compare/comparison.csv", caption="../report/comparison_table.rst", category="Comparison"),
        png=report("results/compare/figures/comparison.png", caption="../report/comparison.rst", category="Comparison"),
        svg="results/compare/figures/comparison.svg",
    params:
        settings=cfg.compare_settings(config),
        style=cfg.plot_settings(config),
    benchmark:
        "results/compare/benchmarks/compare.tsv"
    log:
        "results/compare/logs/compare.log",
    message:
        "Presets side by side: {params.settings[presets]}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/compare.py"
