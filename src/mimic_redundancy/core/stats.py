"""95% confidence intervals of means over samples, resampling seeds (docs/metrics.md has the choice and its coverage).

Samples that share a seed share their noise (and, for synthetic inputs, their video and joint state), so they are not
independent: the unit is the seed. R is the mean over samples (the seeds' sums over their sample counts), se its
standard error over seeds (linearized, as for a ratio), and R* the means of B bootstrap resamples of the seeds. On
each side, the interval takes the wider of two (taking the wider, the log scale of the t part and the seed as the unit
are our choices, not a published method):

    the Student-t interval                      R -/+ t(0.975, G-1) * se
    Hesterberg's expanded percentile interval   the quantiles of R* at the levels p and 1 - p,
                                                p = Phi(-t(0.975, G-1) * sqrt(G / (G-1)))

The expanded levels are Hesterberg's (2015, "What Teachers Should Know About the Bootstrap", The American
Statistician 69:371; ExpandProbs in his R package resample): they widen the percentile levels so that on symmetric
data the percentile interval matches the t interval (G = 8: the 0.57% and 99.43% quantiles instead of 2.5% and 97.5%).
For a non-negative quantity (an MSE, a relative difference, seconds) the t interval is taken on the log scale
(R * exp(-/+ t * se / R)); the percentile interval is the same on any scale and, as quantiles of non-negative
resamples, never below 0. So the interval is never below 0 and reaches 0 only where resamples do (seeds at exactly 0);
paired differences and cosines use both as written. The percentile part follows the skew of the resamples and never
goes past what they reach (a studentized bootstrap put the bound at 1e4 x the mean on 4 unequal seeds); the t part
widens the interval where resamples of few seeds cannot reach far enough (on 4 seeds the percentile part alone covers
77-85% of skewed data). Coverage, measured (tests/test_stats.py, docs/metrics.md): 93-96% at 4 to 64 seeds where the
seeds' means have a skewness up to 2; 91-93% up to 16 seeds at a skewness near 3; 88-90% at 6. With fewer than
MIN_CLUSTERS seeds the bounds are NaN. The resamples come from a fixed seed: a table is the same every time it is
computed from the same NPZ.
"""
from __future__ import annotations

import math

import numpy as np

RESAMPLES = 2000  # config metrics.bootstrap's default
MIN_CLUSTERS = 4  # below this, bounds are NaN: our choice, as 3 seeds give an interval 2-10x as wide as the mean
# (the t part alone, t(0.975, 2) = 4.3; it covers 93-95% of skewed data: docs/metrics.md)
METHOD = ("seed bootstrap: on each side the wider of the Student-t interval (log scale for non-negative quantities) and "
          "Hesterberg's expanded percentile interval")

# t quantile 0.975 for df = 1..30 (two-sided 95%), from the standard t table (the pipeline has no SciPy).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
_Z975 = 1.959964


def t975(df: int) -> float:
    """Two-sided 95% Student-t quantile; beyond the table, the Cornish-Fisher expansion (error < 1e-3)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def expanded_levels(units: int) -> tuple[float, float]:
    """Hesterberg's expanded percentile levels for a 95% interval on `units` units: Phi(-/+ t(0.975, G-1) sqrt(G/(G-1))),
    as ExpandProbs in his R package resample (the bootstrap's spread is sqrt((G-1)/G) times the usual standard error,
    and the percentile interval uses z where the t interval uses t)."""
    z = t975(units - 1) * math.sqrt(units / (units - 1))
    low = 0.5 * math.erfc(z / math.sqrt(2))  # Phi(-z)
    return low, 1 - low


def intervals(values, clusters=None, *, positive: bool, resamples: int = RESAMPLES,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) of the 95% interval of the mean of every row of `values` [..., n] over its n samples;
    `clusters` [n]: the seed of each sample (None: every sample its own unit). NaN entries are left out of their row
    (e.g. samples without ground truth). `positive`: the quantity is >= 0 (an error raises otherwise) and the interval
    is computed on the log scale. One set of resamples (drawn from `seed`) serves every row."""
    values = np.asarray(values, dtype=np.float64)
    shape = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1])
    n = flat.shape[1]
    clusters = np.arange(n) if clusters is None else np.asarray(clusters)
    if clusters.shape != (n,):
        raise ValueError(f"clusters has shape {clusters.shape}, values have {n} samples")
    if positive and (flat < 0).any():
        raise ValueError("a quantity declared non-negative has negative values: use positive=False")
    check_resamples(resamples, "resamples")
    out = np.full((3, flat.shape[0]), np.nan)
    finite = np.isfinite(flat)
    for pattern in np.unique(finite, axis=0):  # rows sharing which samples they have
        rows = (finite == pattern).all(axis=1)
        if pattern.any():
            out[:, rows] = _cluster_bootstrap(flat[rows][:, pattern], clusters[pattern], positive, resamples, seed)
    return tuple(o.reshape(shape) for o in out)


def interval(values, clusters=None, *, positive: bool, resamples: int = RESAMPLES,
             seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of one 1-D set of samples (intervals' row)."""
    rows = intervals(np.asarray(values, dtype=np.float64)[None], clusters, positive=positive, resamples=resamples,
                     seed=seed)
    return tuple(float(v[0]) for v in rows)


def check_resamples(value, key: str) -> int:
    """A bootstrap setting must be a whole number of resamples >= 1 (a bool or 2.5 is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"config key '{key}': {value!r} is not a number of bootstrap resamples; give a whole "
                         f"number >= 1 (default {RESAMPLES})")
    return int(value)


def _cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, positive: bool, resamples: int, seed: int):
    """values [Q, n] (finite), clusters [n] -> (mean, low, high) [Q] each."""
    labels, inverse = np.unique(clusters, return_inverse=True)
    g = labels.size
    onehot = np.zeros((values.shape[1], g))
    onehot[np.arange(values.shape[1]), inverse] = 1.0
    sums, counts = values @ onehot, onehot.sum(axis=0)  # [Q, G], [G]
    mean = sums.sum(axis=1) / counts.sum()
    nan = np.full_like(mean, np.nan)
    if g < MIN_CLUSTERS:
        return mean, nan, nan
    residual = sums - mean[:, None] * counts  # each seed's, at the mean
    se = np.sqrt(g / (g - 1) * (residual ** 2).sum(axis=1)) / counts.sum()  # the ratio's linearized standard error
    weights = np.random.default_rng(seed).multinomial(g, np.full(g, 1.0 / g), size=resamples).astype(np.float64)
    star = (sums @ weights.T) / (weights @ counts)  # [Q, B]: the resampled means R*
    below, above = np.quantile(star, expanded_levels(g), axis=1)
    t = t975(g - 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if positive:  # the t interval on the log scale: log R -/+ t * se / R (the delta method)
            t_low, t_high = mean * np.exp(-t * se / mean), mean * np.exp(t * se / mean)
        else:
            t_low, t_high = mean - t * se, mean + t * se
    low, high = np.minimum(t_low, below), np.maximum(t_high, above)
    flat = se == 0  # every seed gives the same mean (e.g. the final action vs itself): the interval is the point
    return mean, np.where(flat, mean, low), np.where(flat, mean, high)
