"""Confidence intervals by resampling dialogues (items of one dialogue are not independent), and rank
agreement. numpy only; the resampling seed is fixed so a report is reproducible."""
import numpy as np

RESAMPLES = 10_000
SEED = 0


def _interval(stats: np.ndarray) -> list[float]:
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return [float(lo), float(hi)]


def mean_ci(values) -> dict | None:
    """Mean of per-dialogue values with a 95 % percentile-bootstrap interval over dialogues."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None
    idx = np.random.default_rng(SEED).integers(0, v.size, size=(RESAMPLES, v.size))
    return {"mean": float(v.mean()), "ci": _interval(v[idx].mean(axis=1)), "n": int(v.size)}


def ratio_ci(hits, totals) -> dict | None:
    """sum(hits) / sum(totals) over dialogues (each dialogue one hit count and one item count), with a 95 %
    bootstrap interval resampling dialogues."""
    h, t = np.asarray(hits, dtype=float), np.asarray(totals, dtype=float)
    if t.sum() == 0:
        return None
    idx = np.random.default_rng(SEED).integers(0, t.size, size=(RESAMPLES, t.size))
    den = t[idx].sum(axis=1)
    rates = np.divide(h[idx].sum(axis=1), den, out=np.zeros(RESAMPLES), where=den > 0)
    return {"rate": float(h.sum() / t.sum()), "ci": _interval(rates), "n": int(t.sum())}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(1, x.size + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b) -> float | None:
    """Spearman's rank correlation; None when fewer than 3 pairs or one side is constant."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])
