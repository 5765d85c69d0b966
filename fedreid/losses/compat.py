"""Compatibility losses of Bi-C2R (research/methods.md §2), names as the reference logs them.

Features are L2-normalised rows: ``f_old`` from the frozen old model, ``f_new`` from the model
being trained, ``t_on`` = norm(T_on(f_old)) (old → new) and ``t_no`` = norm(T_no(f_new))
(new → old). Default weights of the reference (``fedreid.methods.bic2r``): L_ca 100, L_cr 1,
L_ad 0.007, L_dc 0.0005, L_AF 1.

- :func:`feature_alignment` — L_ca, one MSE per direction;
- :func:`relation_distillation` — L_cr: the batch's negative-pair relations of a source kept
  by its transferred features;
- :func:`directional_consistency` — L_dc: a transfer moves a feature the way the models drifted;
- :func:`logit_distillation` — the KD of L_ad (transferred features stay classifiable);
- :func:`anti_forgetting` — L_AF, LSTKC's affinity distillation towards :func:`forgetting_target`;
- :func:`affinity_alpha` — LSTKC's fusion weight α from how much the batch affinities moved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feature_alignment(transferred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between transferred features and the target space's own (mean over elements)."""
    return F.mse_loss(transferred, target)


def _negative_relations(f: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    s = torch.softmax(f @ f.T / temperature, dim=1) * negatives
    return s / s.sum(dim=1, keepdim=True).clamp_min(1e-12)


def relation_distillation(source: torch.Tensor, transferred: torch.Tensor, pids: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """KL(P_source ‖ P_transferred) over each row's negatives, mean over rows that have any.

    P = row softmax of the batch's dot products (no temperature in the reference), restricted
    to other identities and renormalised over them. The reference also writes the same
    positive entries into both matrices; identical entries add nothing to a KL, so only the
    negatives are compared here. Its row sum lacks ``keepdim`` (a broadcasting slip); this
    normalises each row by its own sum.
    """
    negatives = pids[:, None] != pids[None, :]
    rows = negatives.any(dim=1)
    if not rows.any():
        return source.sum() * 0.0
    p = _negative_relations(source, negatives, temperature)
    q = _negative_relations(transferred, negatives, temperature)
    terms = torch.where(negatives, p * (torch.log(p.clamp_min(1e-12)) - torch.log(q.clamp_min(1e-12))),
                        torch.zeros_like(p))
    return terms.sum(dim=1)[rows].mean()


def directional_consistency(f_new: torch.Tensor, f_old: torch.Tensor, t_on: torch.Tensor,
                            t_no: torch.Tensor) -> torch.Tensor:
    """[1 − cos(f_new − f_old, t_on − f_old)] + [1 − cos(f_old − f_new, f_old − t_no)], batch mean."""
    forward = 1.0 - F.cosine_similarity(f_new - f_old, t_on - f_old, dim=1)
    backward = 1.0 - F.cosine_similarity(f_old - f_new, f_old - t_no, dim=1)
    return (forward + backward).mean()


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T))·T², batch mean; the teacher is a target."""
    t = temperature
    target = torch.softmax(teacher.detach() / t, dim=1)
    return F.kl_div(torch.log_softmax(student / t, dim=1), target, reduction="batchmean") * t * t


def _affinity(f: torch.Tensor, temperature: float, diagonal: torch.Tensor) -> torch.Tensor:
    logits = (f @ f.T / temperature).masked_fill(diagonal, float("-inf"))
    return torch.softmax(logits, dim=1)


def _correct(a: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which pairs a model ranks right, and its row thresholds: a positive is right above the
    row's hardest negative, a negative right below the row's hardest positive."""
    hardest_neg = a.masked_fill(~neg, float("-inf")).amax(dim=1, keepdim=True)
    hardest_pos = a.masked_fill(~pos, float("inf")).amin(dim=1, keepdim=True)
    right = (pos & (a > hardest_neg)) | (neg & (a < hardest_pos))
    return right, hardest_neg, hardest_pos


@torch.no_grad()
def forgetting_target(a_new: torch.Tensor, a_old: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """LSTKC's target affinities from the new and old models' (rows of a softmax, diagonal 0).

    Per pair: the old affinity where the old model ranks the pair right; else the new one
    where the new model does; a positive both miss gets the larger of the two models'
    hardest-negative thresholds, a negative both get wrong the smaller hardest-positive
    threshold; rows renormalised.
    """
    n = len(pids)
    diagonal = torch.eye(n, dtype=torch.bool, device=a_new.device)
    same = pids[:, None] == pids[None, :]
    pos, neg = same & ~diagonal, ~same
    old_right, old_neg_thr, old_pos_thr = _correct(a_old, pos, neg)
    new_right, new_neg_thr, new_pos_thr = _correct(a_new, pos, neg)
    target = torch.where(old_right, a_old, a_new)
    missed = ~old_right & ~new_right
    target = torch.where(missed & pos, torch.maximum(old_neg_thr, new_neg_thr).expand(n, n), target)
    target = torch.where(missed & neg, torch.minimum(old_pos_thr, new_pos_thr).expand(n, n), target)
    target = target.masked_fill(diagonal, 0.0)
    return target / target.sum(dim=1, keepdim=True).clamp_min(1e-12)


def anti_forgetting(f_new: torch.Tensor, f_old: torch.Tensor, pids: torch.Tensor,
                    temperature: float = 0.1) -> torch.Tensor:
    """L_AF (LSTKC): KL(target ‖ A_new), A = row softmax of cos/τ over the batch (self left
    out), target from :func:`forgetting_target` (no gradient through it)."""
    diagonal = torch.eye(len(pids), dtype=torch.bool, device=f_new.device)
    a_new = _affinity(f_new, temperature, diagonal)
    with torch.no_grad():
        target = forgetting_target(a_new.detach(), _affinity(f_old, temperature, diagonal), pids)
    terms = torch.where(diagonal | (target <= 0), torch.zeros_like(a_new),
                        target * (torch.log(target.clamp_min(1e-12)) - torch.log(a_new.clamp_min(1e-12))))
    return terms.sum(dim=1).mean()


@torch.no_grad()
def affinity_alpha(f_new: torch.Tensor, f_old: torch.Tensor, scale: float = 100.0) -> float:
    """LSTKC's fusion weight: α = 1 − mean_i Σ_j |A_new − A_old|, A = row softmax(scale·cos),
    clipped to [0, 1] (the sum can reach 2 when the affinities disagree completely). Self
    pairs are left out: at scale 100 they would make every row one-hot on itself, α ≈ 1."""
    diagonal = torch.eye(len(f_new), dtype=torch.bool, device=f_new.device)
    a_new, a_old = _affinity(f_new, 1.0 / scale, diagonal), _affinity(f_old, 1.0 / scale, diagonal)
    return float((1.0 - (a_new - a_old).abs().sum(dim=1).mean()).clamp(0.0, 1.0))
