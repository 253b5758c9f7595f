"""Statistics of paired success rates: the closed loop's rules against a reference on the same episodes, by several
trained policies (docs/closed-loop.md#the-decision). SciPy and statsmodels are imported where used (the closed loop's
environment has them; the pipeline's does not need them).

The design: P policies (training runs) x S episodes (layouts), crossed: every policy meets every episode, and under
every rule the same initial noise. A rule's effect is D[p, s] = success under the rule - success under the reference,
in {-1, 0, 1}. Two kinds of interval and test are computed, and the more cautious is used:
- Tango's score interval and test on the P x S pairs pooled (Tango 1998): right for discordant pairs that are few or
  none (a bootstrap collapses to [0, 0] there), blind to the spread between policies;
- a crossed ("pigeonhole") bootstrap (Owen 2007) that resamples policies and episodes, each independently: it carries
  the policy-to-policy spread and the shared layouts. Resampling episodes within each policy independently (the
  two-stage bootstrap) would treat the layouts that all policies share as independent draws and understate them.
A p-value that is the larger of two valid ones is valid when either is (both must be small to reject).
"""
from __future__ import annotations

import math

import numpy as np

Z_975 = 1.959963984540054


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact binomial interval of a success rate (never outside [0, 1])."""
    from scipy.stats import beta

    alpha = 1 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return low, high


def discordant(rule: np.ndarray, reference: np.ndarray) -> tuple[int, int, int]:
    """(b, c, n): pairs where only the rule succeeds, where only the reference does, and all pairs."""
    rule, reference = np.asarray(rule, bool).ravel(), np.asarray(reference, bool).ravel()
    return int((rule & ~reference).sum()), int((~rule & reference).sum()), rule.size


def tango_score(b, c, n, d0):
    """Tango's score statistic (1998) for the paired difference d = (b - c) / n at d0: (b - c - n d0) / its standard
    error under the restricted maximum likelihood of the discordant cell given d0. Vectorised over b, c (arrays)."""
    b, c = np.asarray(b, np.float64), np.asarray(c, np.float64)
    a_, b_, c_ = 2 * n, -b - c + (2 * n - b + c) * d0, -c * d0 * (1 - d0)
    p21 = (np.sqrt(np.maximum(b_ * b_ - 4 * a_ * c_, 0.0)) - b_) / (2 * a_)
    variance, excess = n * (2 * p21 + d0 * (1 - d0)), b - c - n * d0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = excess / np.sqrt(variance)
    return np.where(variance > 0, t, np.where(excess > 0, np.inf, np.where(excess < 0, -np.inf, 0.0)))


def _tango_scalar(b: int, c: int, n: int, d0: float) -> float:
    """tango_score for one (b, c), in plain floats (the interval's bisection calls it ~120 times)."""
    a_, b_, c_ = 2 * n, -b - c + (2 * n - b + c) * d0, -c * d0 * (1 - d0)
    p21 = (math.sqrt(max(b_ * b_ - 4 * a_ * c_, 0.0)) - b_) / (2 * a_)
    variance, excess = n * (2 * p21 + d0 * (1 - d0)), b - c - n * d0
    return excess / math.sqrt(variance) if variance > 0 else math.copysign(math.inf, excess) if excess else 0.0


def tango_interval(b: int, c: int, n: int, z: float = Z_975) -> tuple[float, float]:
    """Tango's asymptotic score interval of the paired difference: the d0 where |T(d0)| <= z. It rests on the
    discordant pairs alone: 20 pairs that agree everywhere give [-0.16, +0.16] whatever the success rate."""
    def solve(target: float, low: float, high: float) -> float:  # T is decreasing in d0
        for _ in range(60):  # 2^-60: far below any printed digit
            middle = (low + high) / 2
            low, high = (middle, high) if _tango_scalar(b, c, n, middle) > target else (low, middle)
        return (low + high) / 2

    estimate, tiny = (b - c) / n, 1e-12
    lower = -1.0 if estimate == -1 else solve(z, -1 + tiny, estimate)
    upper = 1.0 if estimate == 1 else solve(-z, estimate, 1 - tiny)
    return lower, upper


def tango_noninferiority_p(b: int, c: int, n: int, margin: float) -> float:
    """One-sided p of H0: d <= -margin against d > -margin, from Tango's score statistic at d0 = -margin."""
    from scipy.stats import norm

    return float(norm.sf(tango_score(b, c, n, -margin)))


def mcnemar_midp(b: int, c: int) -> float:
    """Two-sided mid-p McNemar test on the discordant pairs (Fagerland, Lydersen & Laake 2013): 2 [P(X < k) +
    P(X = k) / 2], X ~ Bin(b + c, 1/2), k = min(b, c); 1 when there is no discordant pair."""
    from scipy.stats import binom

    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    return float(min(1.0, 2 * binom.cdf(k, n, 0.5) - binom.pmf(k, n, 0.5)))


def holm(pvalues) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values: reject where adjusted <= alpha. The i-th smallest p is multiplied
    by (m - i + 1), and the adjusted values are made non-decreasing in that order. The same numbers as statsmodels'
    multipletests(method='holm') (tested), which runs gc.collect() on every call (0.26 s in a large process)."""
    pvalues = np.asarray(pvalues, np.float64)
    m = pvalues.size
    order = np.argsort(pvalues, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * pvalues[order]))
    out = np.empty(m)
    out[order] = stepped
    return out


def crossed_indices(policies: int, episodes: int, resamples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The crossed bootstrap's draws, shared by every rule of a task (common random numbers): (resamples, P) policy
    indices, and (resamples, S) counts of how often each episode is drawn (S draws with replacement)."""
    rng = np.random.default_rng(seed)
    pol = rng.integers(policies, size=(resamples, policies))
    counts = rng.multinomial(episodes, np.full(episodes, 1.0 / episodes), size=resamples).astype(np.float64)
    return pol, counts


def crossed_means(values: np.ndarray, draws: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The mean of values (P, S) over each crossed resample's picked policies x picked episodes: (resamples,)."""
    pol, counts = draws
    per_policy = counts @ values.T.astype(np.float64) / values.shape[1]  # (B, P): each policy's mean over the draw
    return np.take_along_axis(per_policy, pol, axis=1).mean(axis=1)


def percentile_interval(resampled: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    return tuple(float(q) for q in np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2]))


def bootstrap_noninferiority_p(resampled: np.ndarray, margin: float) -> float:
    """One-sided bootstrap p of H0: d <= -margin: the share of resampled differences at or below -margin (with the
    +1 that keeps it above 0)."""
    return float((1 + np.count_nonzero(resampled <= -margin)) / (1 + resampled.size))


def bootstrap_two_sided_p(resampled: np.ndarray) -> float:
    """Two-sided bootstrap p of H0: d = 0: twice the smaller share of resampled differences on either side of 0."""
    below, above = np.count_nonzero(resampled <= 0), np.count_nonzero(resampled >= 0)
    return float(min(1.0, 2 * (1 + min(below, above)) / (1 + resampled.size)))


def tango_power(n: int, discordance: float, margin: float, alpha: float) -> float:
    """Exact power of Tango's one-sided non-inferiority test on n pairs, when the true difference is 0 and a fraction
    `discordance` of pairs disagree (half each way): the trinomial probability of every (b, c) whose score
    statistic at -margin exceeds z_(1 - alpha). Only (b, c) with non-negligible probability are enumerated."""
    from scipy.special import gammaln
    from scipy.stats import norm

    if n < 1:
        return 0.0
    half = discordance / 2
    if half <= 0:  # no discordant pair ever: T(-margin) = n margin / sqrt(n margin (1 - margin)) decides
        return float(float(tango_score(0, 0, n, -margin)) > norm.isf(alpha))
    top = int(min(n, math.ceil(n * half + 12 * math.sqrt(n * half) + 12)))
    b, c = np.meshgrid(np.arange(top + 1), np.arange(top + 1), indexing="ij")
    ok = b + c <= n
    b, c = b[ok], c[ok]
    rest = n - b - c
    log_p = (gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(rest + 1) + (b + c) * math.log(half)
             + (rest * math.log1p(-discordance) if discordance < 1 else np.where(rest == 0, 0.0, -np.inf)))
    reject = tango_score(b, c, n, -margin) > norm.isf(alpha)
    return float(np.exp(log_p[reject]).sum())


def pairs_needed(discordance: float, margin: float, alpha: float, power: float = 0.8, limit: int = 100_000) -> int | None:
    """The fewest pairs at which Tango's test reaches `power` (exact, tango_power) and keeps it for the next 10 n
    (the power of a discrete test saws up and down with n); None above `limit`. Starts from the normal
    approximation, then bisects and steps."""
    from scipy.stats import norm

    z = norm.isf(alpha) + norm.isf(1 - power)
    guess = max(2, int(z * z * max(discordance, 1e-3) / margin ** 2))
    high = guess
    while tango_power(high, discordance, margin, alpha) < power:
        high *= 2
        if high > limit:
            return None
    low = max(1, high // 4)
    while high - low > 1:  # the first n with power >= target, as if power rose with n
        middle = (low + high) // 2
        low, high = (middle, high) if tango_power(middle, discordance, margin, alpha) < power else (low, middle)
    n = high
    while any(tango_power(n + k, discordance, margin, alpha) < power for k in range(1, 11)):
        n += 1
    return n


def discordance_upper(discordant_pairs: int, n: int, level: float = 0.8) -> float:
    """One-sided upper confidence bound (Clopper-Pearson, `level`) of a pilot's discordance: sizing at it, rather than
    at the observed value, gives the planned power with probability about `level` (Browne 1995)."""
    from scipy.stats import beta

    return 1.0 if discordant_pairs >= n else float(beta.ppf(level, discordant_pairs + 1, n - discordant_pairs))
