# The closed loop (inputs.source demos; docs/closed-loop.md): the simulator's (Meta-World, LIBERO) scripted expert writes demonstrations
# as a LeRobot v3.0 dataset, which features, train, probe, sweep and early_stop read like any dataset; the trained
# policy is then rolled out in the simulator at every K and early-stopping rule, on paired episodes.
#   demos -> features -> train -> [trained] probe, sweep, early_stop -> rollout -> rollout_metrics -> plot_rollout
#                                                                            \-> rollout_videos (replayed)
# Rollouts are CPU jobs (simulation and rendering; the tiny head is cheap): on Slurm they ask for no GPU.
localrules:
    rollout_metrics,
    rollout_versus,
    plot_rollout,
    plot_pareto,

# the simulator sim.backend names (sim/backends.py): its module, the shared parts, the file contracts
SIM_CODE = code(f"sim/{config['sim']['backend']}_env", "sim/backends", "sim/common", "core/io")
ROLLOUT_CODE = MODEL_CODE + SIM_CODE + code("analysis/probe", "sim/policy", "sim/rollout", "pipeline/sim_stages",
                                           "data/lerobot")


rule demos:
    input:
        code=SIM_CODE + code("sim/demos", "pipeline/sim_stages"),
    output:
        dataset=directory(cfg.DEMOS_DATASET),
        summary="results/demos/summary.json",
    params:
        settings=cfg.demos_settings(config),
    threads: 1
    benchmark:
        "results/demos/benchmarks/demos.tsv"
    log:
        "results/demos/logs/demos.log",
    message:
        "Record the scripted expert's demonstrations of {params.settings[tasks]} as a LeRobot v3.0 dataset"
    conda:
        "../envs/sim.yaml"
    script:
        "../scripts/demos.py"


rule rollout:
    input:
        checkpoint=policy_checkpoint_files,
        # the dataset the policy learned from: the demonstrations, or (a LeRobot dataset from the Hub, rolled out in
        # LIBERO) the manifest that locates its snapshot in the Hub cache
        dataset=rules.demos.output.summary if config["inputs"]["source"] == "demos" else manifest_of,
        early_stop=results("{preset}", "early_stop.json"),
        code=ROLLOUT_CODE,
    output:
        npz=policy_rollout("rollout.npz"),
    params:
        settings=lambda w: cfg.rollout_settings(config, w.preset, int(w.policy)),
        dataset=cfg.DEMOS_DATASET if config["inputs"]["source"] == "demos" else None,
    threads: 1
    benchmark:
        policy_rollout("benchmarks/rollout.tsv")
    log:
        policy_rollout("logs/rollout.log"),
    message:
        "Roll out policy {wildcards.policy} of preset {wildcards.preset} in closed loop at every K and early-stopping "
        "rule"
    conda:
        "../envs/sim.yaml"
    script:
        "../scripts/rollout.py"


localrules:
    gather_rollout,


rule gather_rollout:
    input:
        shards=policy_rollouts,
        code=code("core/shards", "core/io"),
    output:
        npz=results("{preset}", "rollout.npz"),
    params:
        policies=lambda w: cfg.policy_seeds(config, w.preset),
    log:
        results("{preset}", "logs/gather_rollout.log"),
    message:
        "Gather the rollouts of preset {wildcards.preset}'s policies (and shards) into one file with a policy axis"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/gather_rollout.py"


rule nearest_demo:
    input:
        demos=rules.demos.output.summary,
        code=SIM_CODE + code("sim/nearest_demo", "pipeline/sim_stages", "data/lerobot"),
    output:
        npz="results/demos/nearest-{set}.npz",
    params:
        settings=lambda w: cfg.nearest_demo_settings(config, w.set),
        dataset=cfg.DEMOS_DATASET,
    threads: 1
    benchmark:
        "results/demos/benchmarks/nearest_demo-{set}.tsv"
    log:
        "results/demos/logs/nearest-{set}.log",
    message:
        "The nearest-demo baseline on set {wildcards.set}: each episode's nearest demonstration layout, its distance, "
        "and that demonstration's actions replayed open loop"
    conda:
        "../envs/sim.yaml"
    script:
        "../scripts/nearest_demo.py"


rule rollout_metrics:
    input:
        npz=results("{preset}", "rollout.npz"),
        early_stop=results("{preset}", "early_stop.csv"),
        # the nearest-demo baseline on the same episodes (demonstrations made here only)
        nearest=[f"results/demos/nearest-{config['rollout']['set']}.npz"] if config["inputs"]["source"] == "demos" else [],
        code=code("sim/answers", "core/paired", "core/io"),
    output:
        table=report(results("{preset}", "rollout.csv"), caption="../report/rollout_table.rst", category="Closed loop"),
        summary=results("{preset}", "rollout.json"),
        eval_info=directory(results("{preset}", "eval_info")),
    params:
        settings=cfg.rollout_metrics_settings(config),
    log:
        results("{preset}", "logs/rollout_metrics.log"),
    message:
        "Success rates per policy and pooled, paired differences, the pre-specified decision (Holm) and the nearest-demo "
        "baseline of preset {wildcards.preset}"
    conda:
        "../envs/sim.yaml"
    script:
        "../scripts/rollout_metrics.py"


rule rollout_versus:
    input:
        npz=results("{preset}", "rollout.npz"),
        early_stop=results("{preset}", "early_stop.csv"),
        nearest=rules.rollout_metrics.input.nearest,
        code=code("sim/answers", "core/paired", "core/io"),
    output:
        table=results("{preset}", "rollout-vs-K{k}.csv"),
        summary=results("{preset}", "rollout-vs-K{k}.json"),
    params:
        settings=lambda w: cfg.rollout_metrics_settings(config, int(w.k)),
    log:
        results("{preset}", "logs/rollout_versus-K{k}.log"),
    message:
        "The decision of preset {wildcards.preset} against K={wildcards.k} (rollout.also_against)"
    conda:
        "../envs/sim.yaml"
    script:
        "../scripts/rollout_metrics.py"


rule plot_rollout:
    input:
        table=rules.rollout_metrics.output.table,
        summary=rules.rollout_metrics.output.summary,
        code=code("sim/answers", "report/plots", "core/io"),
    output:
        png=report(results("{preset}", "figures/rollout.png"), caption="../report/rollout.rst", category="Closed loop"),
        svg=results("{preset}", "figures/rollout.svg"),
    params:
        style=cfg.plot_settings(config),
    log:
        results("{preset}", "logs/plot_rollout.log"),
    message:
        "Closed-loop figure of preset {wildcards.preset}: success against NFE, paired differences, open-loop MSE"
    conda:
        "../envs/sim.yaml"
    script:
        "../scripts/plot_rollout.py"


rule plot_pareto:
    input:
        table=rules.rollout_metrics.output.table,
        summary=rules.rollout_metrics.output.summary,
        code=code("sim/answers", "report/plots", "core/io"),
    output:
        png=report(results("{preset}", "figures/pareto.png"), caption="../report/pareto.rst", category="Closed loop"),
        svg=results("{preset}", "figures/pareto.svg"),
    params:
        style=cfg.plot_settings(config),
    log:
        results("{preset}", "logs/plot_pareto.log"),
    message:
        "Success against compute of preset {wildcards.preset}: NFE and head milliseconds per decision, the frontier"
    conda:
        "../envs/sim.yaml"
    script:
        "../scripts/plot_pareto.py"


rule rollout_videos:
    input:
        npz=results("{preset}", "rollout.npz"),
        code=SIM_CODE + code("sim/rollout", "pipeline/sim_stages", "sim/demos"),
    output:
        videos=directory(results("{preset}", "rollout/videos")),
        summary=report(results("{preset}", "rollout/videos.json"), caption="../report/rollout_videos.rst",
                       category="Closed loop"),
    params:
        size=config["rollout"]["videos"],
        settings=lambda w: cfg.rollout_settings(config, w.preset),
    threads: 1
    log:
        results("{preset}", "logs/rollout_videos.log"),
    message:
        "Replay the first success and the first failure of every rule of preset {wildcards.preset} (mp4), checking "
        "that each replay gives the recorded outcome"
    conda:
        "../envs/sim.yaml"
    script:
        "../scripts/rollout_videos.py"
