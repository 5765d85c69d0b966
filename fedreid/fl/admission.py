"""Admission of a site to a run: is it one of the run's sites, and does what it would send
fit the global model? Checked once per node before it is sampled, so a misconfigured site
(another backbone, another method's shared part) is refused at the start with a reason,
instead of having each of its replies rejected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Signature = Mapping[str, tuple[Sequence[int], str]]  # key -> (shape, dtype)


def signature_of(state: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(int(d) for d in v.shape), str(v.dtype)) for k, v in state.items()}


def admission_problems(site: str, method: str, arch: str, signature: Signature,
                       expected: Signature, run_sites: Sequence[str]) -> list[str]:
    """Why site ``site`` cannot take part (empty: admit it)."""
    if site not in run_sites:
        return [f"site {site!r} is not part of this run (data.sites = {list(run_sites)})"]
    problems = []
    missing = sorted(set(expected) - set(signature))
    extra = sorted(set(signature) - set(expected))
    if missing or extra:
        problems.append(f"its shared arrays differ from the global model: missing {len(missing)} "
                        f"{missing[:3]}, extra {len(extra)} {extra[:3]}")
    for key in sorted(set(expected) & set(signature)):
        shape, dtype = tuple(signature[key][0]), str(signature[key][1])
        want_shape, want_dtype = tuple(expected[key][0]), str(expected[key][1])
        if shape != want_shape or dtype != want_dtype:
            problems.append(f"{key}: {shape} {dtype} where the global model has {want_shape} {want_dtype}")
            if len(problems) >= 4:
                break
    if problems:
        hint = ""
        if extra and not missing:  # the site shares modules of its method beyond the backbone
            hint = (f", or keep its own modules on the site with a narrower method.{method}.share "
                    f"(`fedreid config method.{method}.share=?` lists the choices)")
        problems.append(f"(site runs method {method!r} on {arch!r}; every site of a federation must "
                        "share arrays of the same backbone: set one model.arch for all, or run one "
                        f"federation per backbone{hint})")
    return problems
