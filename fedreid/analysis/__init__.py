"""Attribute importance of a MoSAIC model: which attributes a ReID model relies on, per site
and for a federation (``fedreid analyse attributes``).

:mod:`~fedreid.analysis.knockout` scores every query with each attribute expert knocked out;
:mod:`~fedreid.analysis.importance` turns that into importance measures (knock-out loss,
GLMs, random-forest permutation importance, SHAP) and Holm-corrected paired tests;
:mod:`~fedreid.analysis.report` writes the Markdown table and the bar chart;
:mod:`~fedreid.analysis.models` loads the sites' models from a run; :mod:`~fedreid.analysis.truth`
reads synthetic-8's ground truth to check the ranking against.
"""

from fedreid.analysis.importance import MEASURES, Importance, attribute_importance, rank_agreement
from fedreid.analysis.knockout import Knockout, QueryScores, query_scores, run_knockout
from fedreid.analysis.report import importance_chart, importance_markdown
from fedreid.analysis.truth import AttributeTruth, generator_truth

__all__ = [
    "MEASURES",
    "AttributeTruth",
    "Importance",
    "Knockout",
    "QueryScores",
    "attribute_importance",
    "generator_truth",
    "importance_chart",
    "importance_markdown",
    "query_scores",
    "rank_agreement",
    "run_knockout",
]
