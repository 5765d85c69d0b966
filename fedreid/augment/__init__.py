"""Data augmentation that stays on a site: camera-style GAN copies, cross-site style
aggregates, and no-reference pixel quality of generated images.

- :mod:`~fedreid.augment.stargan` / :mod:`~fedreid.augment.gan`: a small StarGAN over the
  site's cameras, trained resumably on the site's own images (``fedreid site augment``);
- :mod:`~fedreid.augment.copies`: the translated copies on disk (same layout, labels kept,
  source and target camera in meta.json) and reading them back for a method;
- :mod:`~fedreid.augment.style`: per-camera low-frequency amplitude aggregates (what an
  unlabelled site may share, opt-in) and rendering images in them;
- :mod:`~fedreid.augment.quality`: offline pixel scores to drop the worst copies.
"""

from fedreid.augment.copies import (
    GeneratedImages,
    generated_folder,
    load_generated,
    site_folder,
    write_camstyle_copies,
)
from fedreid.augment.gan import CamStyleGAN, GanOptions, train_camstyle_gan
from fedreid.augment.pool import CopyPool
from fedreid.augment.quality import QUALITY_SCORES, keep_best, quality_scores
from fedreid.augment.stargan import CamStyleDiscriminator, CamStyleGenerator
from fedreid.augment.style import (
    StyleAggregate,
    apply_style,
    load_style_bank,
    save_style_message,
    site_style_message,
    style_aggregate,
    style_bank,
)

__all__ = [
    "QUALITY_SCORES",
    "CamStyleDiscriminator",
    "CamStyleGAN",
    "CamStyleGenerator",
    "CopyPool",
    "GanOptions",
    "GeneratedImages",
    "StyleAggregate",
    "apply_style",
    "generated_folder",
    "keep_best",
    "load_generated",
    "load_style_bank",
    "quality_scores",
    "save_style_message",
    "site_folder",
    "site_style_message",
    "style_aggregate",
    "style_bank",
    "train_camstyle_gan",
    "write_camstyle_copies",
]
