"""Attribute importance as files a person opens: a Markdown table and a PNG bar chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedreid.analysis.importance import MEASURES, Importance, rank_agreement
from fedreid.runlog import markdown_table

_HEADERS = {
    "delta_ap": "ΔAP (knock-out)",
    "delta_rank1": "ΔRank-1",
    "glm_ap": "GLM AP",
    "glm_hit": "GLM hit (log-odds)",
    "forest": "forest perm.",
    "shap": "SHAP",
}


def _order(imp: Importance) -> np.ndarray:
    return np.argsort(-np.nan_to_num(imp.delta_ap, nan=-np.inf), kind="stable")


def agreement_lines(imp: Importance, truth: dict[str, float], present: list[str] | None = None) -> list[str]:
    """Spearman ρ of each measure against ``truth``, over all attributes and over ``present``."""
    lines = []
    for measure in MEASURES:
        if getattr(imp, measure) is None:
            continue
        values = imp.measure(measure)
        rho, n = rank_agreement(values, truth)
        line = f"- {_HEADERS[measure]}: ρ = {rho:.3f} over {n} attributes"
        if present is not None:
            rho_p, n_p = rank_agreement(values, truth, present)
            line += f"; ρ = {rho_p:.3f} over the {n_p} present at the site"
        lines.append(line)
    return lines


def importance_markdown(imp: Importance, title: str, truth: dict[str, float] | None = None,
                        present: list[str] | None = None) -> str:
    """The table (attributes by knock-out ΔAP, largest first) and, with a truth, the rank
    agreement of every measure with it."""
    headers = ["attribute", "frequency", *(_HEADERS[m] for m in MEASURES if getattr(imp, m) is not None),
               "GLM AP p", "GLM hit p", "Wilcoxon p (Holm)", "McNemar p (Holm)"]
    if truth is not None:
        headers.append("truth (bits)")
    rows = []
    for i in _order(imp):
        row = [imp.names[i], float(imp.frequency[i]),
               *(float(getattr(imp, m)[i]) for m in MEASURES if getattr(imp, m) is not None),
               float(imp.glm_ap_p[i]), float(imp.glm_hit_p[i]), float(imp.wilcoxon_p[i]),
               float(imp.mcnemar_p[i])]
        if truth is not None:
            row.append(float(truth.get(imp.names[i], float("nan"))))
        rows.append(row)
    text = f"# {title}\n\n{imp.num_queries} queries; importance = what removing the attribute's expert costs.\n\n"
    if truth is not None:
        text += "Rank agreement with the generator's separability:\n\n" + "\n".join(agreement_lines(imp, truth, present)) + "\n\n"
    return text + markdown_table(headers, rows)


def importance_chart(imp: Importance, path: str | Path, title: str, top: int = 25) -> Path:
    """Horizontal bars of the knock-out ΔAP and ΔRank-1 of the ``top`` attributes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = _order(imp)[:top][::-1]
    names = [imp.names[i] for i in order]
    y = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(order) + 1.4), dpi=110)
    ax.barh(y + 0.2, imp.delta_ap[order], height=0.4, label="ΔAP")
    ax.barh(y - 0.2, imp.delta_rank1[order], height=0.4, label="ΔRank-1")
    ax.set_yticks(y, names, fontsize=7)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("mean loss when the expert is knocked out")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def site_agreement_markdown(by_site: dict[str, Importance], measure: str = "delta_ap") -> str:
    """Spearman ρ between every two sites' rankings of one measure: low where the sites rely
    on different attributes."""
    sites = list(by_site)
    rows = []
    for a in sites:
        values = by_site[a].measure(measure)
        rows.append([a, *(rank_agreement(values, by_site[b].measure(measure))[0] for b in sites)])
    return f"Rank agreement between sites ({_HEADERS[measure]}, Spearman ρ):\n\n" + markdown_table(["site", *sites], rows)
