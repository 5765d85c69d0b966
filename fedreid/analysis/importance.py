"""Attribute importance from a knock-out evaluation, measured five ways, plus paired tests.

Rows of the long table are (condition, query): condition 0 has every expert on, condition
``1 + a`` has expert ``a`` off. Per attribute ``a``:

- ``delta_ap`` / ``delta_rank1``: mean over queries of the figure with every expert on minus
  the figure with ``a`` off (what removing the expert costs);
- ``glm_ap``: minus the coefficient of the indicator "``a`` is off" in a Gaussian GLM of AP
  on the knock-out indicators; ``glm_hit``: the same in a Binomial (logit) GLM of the Rank-1
  hit (a log-odds drop). Standard errors are clustered by query (a query's rows are not
  independent); ``*_p`` are their Wald p-values (statsmodels);
- ``forest``: permutation importance of the indicator "``a`` is off" in a random forest
  (scikit-learn) predicting a query's AP loss from the knock-out indicators and the query's
  own attribute values, on held-out queries: the increase in squared error when that
  column is shuffled;
- ``shap``: mean |SHAP value| of that indicator (TreeExplainer on the same forest), when the
  ``shap`` package is installed;
- ``wilcoxon_p``: Wilcoxon signed-rank test of AP with vs without the expert, and
  ``mcnemar_p``: exact McNemar test of the Rank-1 hits, both Holm-corrected over attributes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm
from scipy import stats
from sklearn.ensemble import RandomForestRegressor
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import PerfectSeparationError

from fedreid.analysis.knockout import Knockout

MEASURES = ("delta_ap", "delta_rank1", "glm_ap", "glm_hit", "forest", "shap")


@dataclass(frozen=True)
class Importance:
    """One value per attribute (expert order) for each measure of the module docstring."""

    names: tuple[str, ...]
    frequency: np.ndarray
    delta_ap: np.ndarray
    delta_rank1: np.ndarray
    glm_ap: np.ndarray
    glm_ap_p: np.ndarray
    glm_hit: np.ndarray
    glm_hit_p: np.ndarray
    forest: np.ndarray
    shap: np.ndarray | None
    wilcoxon_p: np.ndarray
    mcnemar_p: np.ndarray
    num_queries: int

    def measure(self, name: str) -> dict[str, float]:
        """``{attribute: value}`` of one measure (``MEASURES``)."""
        if name not in MEASURES:
            raise ValueError(f"importance measure {name!r}: choose one of {', '.join(MEASURES)}")
        values = getattr(self, name)
        if values is None:
            raise ValueError(f"importance measure {name!r} was not computed (is the shap package installed?)")
        return dict(zip(self.names, map(float, values), strict=True))

    def to_dict(self) -> dict:
        out = {"names": list(self.names), "num_queries": self.num_queries}
        for key in ("frequency", *MEASURES, "glm_ap_p", "glm_hit_p", "wilcoxon_p", "mcnemar_p"):
            value = getattr(self, key)
            out[key] = None if value is None else [float(v) for v in value]
        return out


def _long_table(ko: Knockout) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Knock-out indicators (rows × E), AP, hit and query id of every (condition, query) row."""
    conditions, queries = ko.ap.shape
    cond = np.repeat(np.arange(conditions), queries)
    off = np.zeros((conditions * queries, conditions - 1))
    rows = np.flatnonzero(cond > 0)
    off[rows, cond[rows] - 1] = 1.0
    return off, ko.ap.ravel(), ko.hit.ravel(), np.tile(np.arange(queries), conditions)


def _glm(y: np.ndarray, off: np.ndarray, groups: np.ndarray, family) -> tuple[np.ndarray, np.ndarray]:
    """(−coefficients, p-values) of the knock-out indicators; NaN where the fit is impossible
    (e.g. every hit the same)."""
    nan = np.full(off.shape[1], np.nan)
    if np.ptp(y) == 0:
        return nan, nan
    design = sm.add_constant(off, has_constant="add")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.GLM(y, design, family=family).fit(cov_type="cluster", cov_kwds={"groups": groups})
    except (np.linalg.LinAlgError, ValueError, PerfectSeparationError):
        return nan, nan
    return -np.asarray(fit.params[1:]), np.asarray(fit.pvalues[1:])


def _forest(ko: Knockout, off: np.ndarray, queries: np.ndarray, seed: int, trees: int,
            repeats: int, shap_rows: int) -> tuple[np.ndarray, np.ndarray | None]:
    conditions = ko.ap.shape[0]
    loss = (ko.ap[0][None, :] - ko.ap).ravel()  # each row's AP loss against all experts on
    features = np.hstack([off, np.tile(ko.attributes, (conditions, 1))])
    rng = np.random.default_rng(seed)
    held = rng.random(ko.num_queries) < 0.3
    if held.all() or not held.any():
        held = np.arange(ko.num_queries) % 3 == 0
    test = held[queries]
    forest = RandomForestRegressor(n_estimators=trees, min_samples_leaf=3, random_state=seed, n_jobs=1)
    forest.fit(features[~test], loss[~test])
    x, y = features[test], loss[test]
    base = np.mean((forest.predict(x) - y) ** 2)
    importance = np.zeros(off.shape[1])
    for a in range(off.shape[1]):
        errors = []
        for _ in range(repeats):
            shuffled = x.copy()
            shuffled[:, a] = rng.permutation(shuffled[:, a])
            errors.append(np.mean((forest.predict(shuffled) - y) ** 2) - base)
        importance[a] = float(np.mean(errors))
    return importance, _shap(forest, x, off.shape[1], shap_rows, rng)


def _shap(forest: RandomForestRegressor, x: np.ndarray, n_off: int, rows: int,
          rng: np.random.Generator) -> np.ndarray | None:
    try:
        import shap  # optional: the analysis runs without it
    except ImportError:
        return None
    sample = x[rng.choice(len(x), size=min(rows, len(x)), replace=False)]
    values = np.asarray(shap.TreeExplainer(forest).shap_values(sample))
    return np.abs(values[:, :n_off]).mean(axis=0)


def _paired_tests(ko: Knockout) -> tuple[np.ndarray, np.ndarray]:
    wilcoxon, mcnemar = [], []
    for a in range(len(ko.names)):
        diff = ko.ap[0] - ko.ap[a + 1]
        wilcoxon.append(1.0 if not np.any(diff) else float(stats.wilcoxon(diff).pvalue))
        lost = int(np.sum((ko.hit[0] == 1) & (ko.hit[a + 1] == 0)))
        gained = int(np.sum((ko.hit[0] == 0) & (ko.hit[a + 1] == 1)))
        n = lost + gained
        mcnemar.append(1.0 if n == 0 else float(stats.binomtest(min(lost, gained), n, 0.5).pvalue))
    holm = lambda p: multipletests(p, method="holm")[1]  # noqa: E731
    return holm(np.array(wilcoxon)), holm(np.array(mcnemar))


def attribute_importance(ko: Knockout, *, seed: int = 0, trees: int = 100, repeats: int = 3,
                         shap_rows: int = 400) -> Importance:
    """Every measure of the module docstring for one knock-out evaluation (a site's, or a
    federation's pooled queries)."""
    if ko.num_queries < 3:
        raise ValueError(f"attribute importance needs at least 3 scored queries, got {ko.num_queries}")
    off, ap, hit, queries = _long_table(ko)
    glm_ap, glm_ap_p = _glm(ap, off, queries, sm.families.Gaussian())
    glm_hit, glm_hit_p = _glm(hit, off, queries, sm.families.Binomial())
    forest, shap_values = _forest(ko, off, queries, seed, trees, repeats, shap_rows)
    wilcoxon_p, mcnemar_p = _paired_tests(ko)
    return Importance(
        names=ko.names, frequency=ko.attributes.mean(axis=0),
        delta_ap=(ko.ap[0][None, :] - ko.ap[1:]).mean(axis=1),
        delta_rank1=(ko.hit[0][None, :] - ko.hit[1:]).mean(axis=1),
        glm_ap=glm_ap, glm_ap_p=glm_ap_p, glm_hit=glm_hit, glm_hit_p=glm_hit_p,
        forest=forest, shap=shap_values, wilcoxon_p=wilcoxon_p, mcnemar_p=mcnemar_p,
        num_queries=ko.num_queries,
    )


def rank_agreement(measured: dict[str, float], truth: dict[str, float],
                   names: list[str] | None = None) -> tuple[float, int]:
    """Spearman ρ between a measured importance and a known truth over ``names`` (default:
    the attributes both have), and how many attributes it was computed on; NaN when either
    side is constant."""
    names = [n for n in (names or measured) if n in truth and n in measured
             and np.isfinite(measured[n]) and np.isfinite(truth[n])]
    if len(names) < 3:
        return float("nan"), len(names)
    a = np.array([measured[n] for n in names])
    b = np.array([truth[n] for n in names])
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), len(names)
    return float(stats.spearmanr(a, b).statistic), len(names)
