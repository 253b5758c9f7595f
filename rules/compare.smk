# The selected preset and the 'compare' presets side by side (same inputs): from their tables alone.
localrules:
    compare,


rule compare:
    input:
        unpack(compare_inputs),
        code=code("report/compare", "report/plots", "analysis/metrics", "core/stats", "core/io"),
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
