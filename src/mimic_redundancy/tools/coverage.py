"""The coverage of the tables' 95% intervals (core.stats) on skewed data with a known mean: the table in
docs/metrics.md. `python -m mimic_redundancy.tools.coverage [--draws 4000]` prints it as markdown (~15 s).

Each cell: the share of `draws` sample sets of n seeds whose interval holds the true mean, for the intervals the
tables use (core.stats.intervals, resampling seeds) and, beside them, the Student-t interval on the seeds' means they
replaced (with the share of its lower bounds below 0)."""
from __future__ import annotations

import argparse
import math

import numpy as np

from mimic_redundancy.core.stats import intervals, t975

# name -> (draw(rng, (draws, seeds)) -> samples [draws, seeds, samples per seed], true mean, skewness of a seed's mean)
DISTRIBUTIONS = {
    "chi-square 4": (lambda rng, shape: rng.chisquare(4, shape)[..., None], 4.0, math.sqrt(2)),
    "exponential (chi-square 2)": (lambda rng, shape: rng.exponential(1.0, shape)[..., None], 1.0, 2.0),
    "log-normal sigma 0.5": (lambda rng, shape: rng.lognormal(0.0, 0.5, shape)[..., None], math.exp(0.125), 1.75),
    "chi-square 1": (lambda rng, shape: rng.chisquare(1, shape)[..., None], 1.0, math.sqrt(8)),
    "log-normal sigma 1": (lambda rng, shape: rng.lognormal(0.0, 1.0, shape)[..., None], math.exp(0.5), 6.18),
    # two exponential samples per seed times the seed's log-normal(0, 0.5) scale: correlated within a seed, as the
    # pipeline's prompts that share a seed's noise
    "2 samples x a shared per-seed scale": (
        lambda rng, shape: rng.lognormal(0.0, 0.5, shape + (1,)) * rng.exponential(1.0, shape + (2,)),
        math.exp(0.125), 2.89),
}
UNITS = (4, 8, 16, 64)


def coverage_table(draws: int = 4000, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for name, (draw, mean, skew) in DISTRIBUTIONS.items():
        for n in UNITS:
            samples = draw(rng, (draws, n))
            clusters = np.repeat(np.arange(n), samples.shape[-1])
            _, low, high = intervals(samples.reshape(draws, -1), clusters, positive=True)
            seed_means = samples.mean(axis=-1)
            m, se = seed_means.mean(axis=1), seed_means.std(axis=1, ddof=1) / math.sqrt(n)
            t_low, t_high = m - t975(n - 1) * se, m + t975(n - 1) * se
            rows.append({"distribution": name, "skewness": skew, "n": n,
                         "coverage": float(((low <= mean) & (mean <= high)).mean()),
                         "median_width": float(np.median((high - low) / mean)),
                         "t_coverage": float(((t_low <= mean) & (mean <= t_high)).mean()),
                         "t_below_zero": float((t_low < 0).mean())})
    return rows


def markdown(rows: list[dict], draws: int) -> str:
    lines = [f"| data (skewness of a seed's mean) | seeds n | these intervals: coverage | median width / mean "
             f"| Student-t: coverage | t lower bound < 0 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['distribution']} ({r['skewness']:.2g}) | {r['n']} | {r['coverage']:.1%} | {r['median_width']:.2f} "
              f"| {r['t_coverage']:.1%} | {r['t_below_zero']:.0%} |" for r in rows]
    return "\n".join(lines) + f"\n\n{draws} draws per row (`python -m mimic_redundancy.tools.coverage --draws {draws}`).\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--draws", type=int, default=4000)
    args = parser.parse_args(argv)
    print(markdown(coverage_table(args.draws), args.draws))


if __name__ == "__main__":
    main()
