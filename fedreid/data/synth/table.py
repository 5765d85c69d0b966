"""The synthetic-8 table as rows (for the CLI) and Markdown (for the README).

Counts come from the plan, so they are exactly what ``generate_synthetic8`` writes for the
same scale, seed and ``min_test_ids``; the real statistics are shown beside them.
"""

from __future__ import annotations

from .plan import plan_site
from .specs import SITE_SPECS


def spec_rows(scale: float = 1.0, *, seed: int = 0, min_test_ids: int = 30) -> list[dict]:
    """One dict per site: synthetic counts at ``scale``, settings, and the real counts."""
    rows = []
    for spec in SITE_SPECS:
        counts = plan_site(spec, seed=seed, scale=scale, min_test_ids=min_test_ids).counts()
        res = sorted({c.resolution for c in spec.cameras})
        lo, hi = spec.images_per_cam
        per_cam = f"{lo}" if lo == hi else f"{lo}-{hi}"
        if spec.video:
            per_cam += f" frames x {spec.tracklets_per_cam} tracklet"
        rows.append(
            {
                "site": spec.key,
                "dataset": spec.dataset,
                "video": spec.video,
                "cams": spec.num_cameras,
                "train_ids": counts["train_all"]["ids"],
                "train_imgs": counts["train_all"]["images"],
                "query_ids": counts["query"]["ids"],
                "query_imgs": counts["query"]["images"],
                "gallery_ids": counts["gallery"]["ids"],
                "gallery_imgs": counts["gallery"]["images"],
                "distractor_ids": counts["distractors"]["ids"],
                "imgs_per_cam": per_cam,
                "resolution": "/".join(f"{r:g}" for r in res),
                "conditions": spec.conditions,
                "real_train_ids": spec.real.train_ids,
                "real_train_imgs": spec.real.train_imgs,
                "real_query_ids": spec.real.query_ids,
                "real_query_imgs": spec.real.query_imgs,
                "real_gallery_imgs": spec.real.gallery_imgs,
            }
        )
    return rows


def render_spec_table(scale: float = 1.0, *, seed: int = 0, min_test_ids: int = 30) -> str:
    """Markdown table: synthetic count, then the real count in parentheses."""
    head = (
        "| Site | Imitates | Cams | Train IDs | Train imgs | Query IDs | Query imgs | Gallery imgs "
        "| Distractor IDs | Imgs/ID/cam | Res. | Conditions |"
    )
    lines = [head, "|" + "---|" * 12]
    total = 0
    for r in spec_rows(scale, seed=seed, min_test_ids=min_test_ids):
        total += r["train_imgs"] + r["query_imgs"] + r["gallery_imgs"]
        lines.append(
            f"| {r['site']} | {r['dataset']} | {r['cams']} | {r['train_ids']} ({r['real_train_ids']}) "
            f"| {r['train_imgs']} ({r['real_train_imgs']:,}) | {r['query_ids']} ({r['real_query_ids']}) "
            f"| {r['query_imgs']} ({r['real_query_imgs']:,}) | {r['gallery_imgs']} ({r['real_gallery_imgs']:,}) "
            f"| {r['distractor_ids']} | {r['imgs_per_cam']} | {r['resolution']} | {r['conditions']} |"
        )
    lines.append(f"\nscale {scale:g}, seed {seed}: {total:,} images; real counts in parentheses.")
    return "\n".join(lines)
