"""Site-side augmentation: the camera-style GAN (shapes, learning, resumable checkpoint), the
copies on disk and back, pixel quality scores, and the style-aggregate message."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from cli.augment import augment, styles
from fedreid.augment import (
    CamStyleDiscriminator,
    CamStyleGenerator,
    CopyPool,
    GanOptions,
    apply_style,
    generated_folder,
    keep_best,
    load_generated,
    load_style_bank,
    quality_scores,
    save_style_message,
    site_folder,
    site_style_message,
    style_aggregate,
    style_bank,
    train_camstyle_gan,
    write_camstyle_copies,
)
from fedreid.augment.quality import sharpness
from fedreid.data.records import DataError
from fedreid.data.split_images import load_split_images
from fedreid.data.synth import generate_synthetic8

MARKET_NAME = re.compile(r"^(\d+)_c(\d+)")


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=1, size=(32, 16), sites=["market"], min_test_ids=6, workers=1)
    return root / "market", load_split_images(root / "market", "fedreid", (32, 16))


def two_camera_images(n: int = 32, size: tuple[int, int] = (16, 8)) -> tuple[torch.Tensor, np.ndarray]:
    """Noise images with a strong per-camera colour cast: camera 0 reddish, camera 1 bluish."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 120, (n, 3, *size), generator=gen)
    cams = np.arange(n) % 2
    x[cams == 0, 0] += 120
    x[cams == 1, 2] += 120
    return x.to(torch.uint8), cams


# ---- the networks ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 16), (64, 32), (128, 64)])
def test_generator_keeps_the_image_shape_and_discriminator_heads_fit(size):
    g, d = CamStyleGenerator(5), CamStyleDiscriminator(5, size)
    x = torch.rand(2, 3, *size) * 2 - 1
    y = g(x, torch.tensor([0, 4]))
    assert y.shape == x.shape and y.abs().max() <= 1
    src, cls = d(y)
    assert cls.shape == (2, 5) and src.shape[:2] == (2, 1) and min(src.shape[2:]) >= 2
    assert sum(p.numel() for p in g.parameters()) < 400_000  # the site-sized generator


def test_gan_rejects_sizes_and_single_camera_sites():
    with pytest.raises(ValueError, match="multiples of 4"):
        CamStyleDiscriminator(3, (30, 16))
    with pytest.raises(ValueError, match="at least two cameras"):
        CamStyleGenerator(1)
    with pytest.raises(ValueError, match="iterations=0"):
        GanOptions(iterations=0)


def test_gan_learns_the_cameras():
    images, cams = two_camera_images()
    logs = []
    train_camstyle_gan(images, cams, GanOptions(iterations=60, batch_size=8, dim=8, d_dim=8, lr=1e-3),
                       progress=lambda i, n, log: logs.append(dict(log)))
    first, last = np.mean([r["d_cls"] for r in logs[:3]]), np.mean([r["d_cls"] for r in logs[-3:]])
    assert last < 0.5 * first  # the critic tells the cameras apart
    assert "g_rec" in logs[-1] and np.isfinite(logs[-1]["g_loss"])


def test_an_interrupted_gan_resumes_to_the_uninterrupted_result(tmp_path):
    images, cams = two_camera_images()
    options = GanOptions(iterations=6, batch_size=4, dim=4, d_dim=4, n_critic=2)
    whole = train_camstyle_gan(images, cams, options)

    def stop_at_four(i, n, logs):
        if i == 4:
            raise KeyboardInterrupt

    ckpt = tmp_path / "gan.pt"
    with pytest.raises(KeyboardInterrupt):
        train_camstyle_gan(images, cams, options, checkpoint=ckpt, checkpoint_every=2, progress=stop_at_four)
    assert torch.load(ckpt, weights_only=False)["iteration"] == 4
    resumed = train_camstyle_gan(images, cams, options, checkpoint=ckpt, checkpoint_every=2)
    for a, b in zip(whole.generator.state_dict().values(), resumed.generator.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="dim=4"):
        train_camstyle_gan(images, cams, GanOptions(iterations=6, batch_size=4, dim=8, d_dim=4, n_critic=2),
                           checkpoint=ckpt)


# ---- copies on disk ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def copies(tiny_site, tmp_path_factory):
    site, images = tiny_site
    gan = train_camstyle_gan(images.train.images, images.train.camids,
                             GanOptions(iterations=3, batch_size=4, dim=4, d_dim=4))
    out = site / "augmented"
    n = write_camstyle_copies(site, images.train.samples, images.train.images, gan, out, per_image=2)
    return out, n, gan


def test_copies_keep_labels_and_name_their_camera(tiny_site, copies):
    site, images = tiny_site
    out, n, gan = copies
    assert n == 2 * len(images.train)
    meta = json.loads((out / "meta.json").read_text())
    for rel, entry in meta["images"].items():
        pid, cam = (int(v) for v in MARKET_NAME.match(rel.split("/")[-1]).groups())
        assert (pid, cam - 1) == (entry["pid"], entry["camid"]) and entry["camid"] != entry["source_camid"]
        assert (site / entry["source"]).is_file() and (out / "pytorch" / rel).is_file()
    generated = load_generated(out, images.train, option="method.iqaga.generated")
    assert len(generated) == n
    np.testing.assert_array_equal(images.train.pids[generated.source_row], [e["pid"] for _, e in sorted(meta["images"].items())])
    pool = CopyPool(generated, len(images.train))
    picks = pool.draw(np.arange(len(images.train)), np.random.default_rng(0))
    np.testing.assert_array_equal(generated.source_row[picks], np.arange(len(images.train)))


def test_the_methods_find_the_copies_and_explain_when_missing(tiny_site, copies, tmp_path):
    site, images = tiny_site
    assert site_folder(images.train) == site.resolve()
    assert generated_folder("augmented", images.train) == site.resolve() / "augmented"
    assert generated_folder(str(tmp_path / "{site}"), images.train) == tmp_path / "market"
    with pytest.raises(DataError, match="fedreid site augment --data"):
        load_generated(tmp_path / "none", images.train, option="method.iqaga.generated")


def test_rewriting_replaces_the_previous_copies(tiny_site, copies, tmp_path):
    site, images = tiny_site
    _, _, gan = copies
    out = tmp_path / "again"
    write_camstyle_copies(site, images.train.samples, images.train.images, gan, out, per_image=2)
    n = write_camstyle_copies(site, images.train.samples, images.train.images, gan, out, per_image=1)
    assert len(list((out / "pytorch").rglob("*.jpg"))) == n == len(images.train)


# ---- pixel quality ------------------------------------------------------------------------------
def test_sharpness_ranks_a_blurred_copy_lower_and_keep_best_drops_the_worst():
    images, _ = two_camera_images(4, (32, 16))
    blurred = torch.nn.functional.avg_pool2d(images.float(), 3, 1, 1).round().to(torch.uint8)
    sharp, soft = sharpness(images), sharpness(blurred)
    assert (soft < sharp).all() and ((0 <= sharp) & (sharp <= 1)).all()
    assert (quality_scores(blurred, "laplacian") < quality_scores(images, "laplacian")).all()
    keep = keep_best(np.array([0.5, 0.1, 0.9, 0.3]), 0.5)
    assert keep.tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="choose one of"):
        quality_scores(images, "brisque")


def test_piqe_scores_offline_when_installed():
    pytest.importorskip("pypiqe")
    images, _ = two_camera_images(2, (64, 32))
    assert np.isfinite(quality_scores(images, "piqe")).all()


# ---- style aggregates ---------------------------------------------------------------------------
def test_style_aggregate_is_a_small_average_without_arrangement():
    images, _ = two_camera_images(20, (64, 32))
    agg = style_aggregate(images, min_images=20)
    assert set(agg) == {"amplitude", "count"} and int(agg["count"]) == 20
    assert agg["amplitude"].shape == (3, 9, 5) and agg["amplitude"].size < images[0].numel() / 40
    shifted = torch.roll(images, shifts=(11, 5), dims=(2, 3))  # every person moved: same style
    np.testing.assert_allclose(style_aggregate(shifted, 20)["amplitude"], agg["amplitude"], rtol=1e-5, atol=1e-7)
    one_changed = images.clone()
    one_changed[0] = 255 - one_changed[0]
    diff = np.abs(style_aggregate(one_changed, 20)["amplitude"] - agg["amplitude"]).max()
    assert diff <= 1.0 / 20 + 1e-6  # one image moves the mean by at most its share (amplitudes <= 1)
    with pytest.raises(ValueError, match="fewer than min_images=21"):
        style_aggregate(images, min_images=21)
    with pytest.raises(ValueError, match="at least 2 images"):
        style_aggregate(images[:1], min_images=1)


def test_site_message_lists_only_cameras_with_enough_images_and_parses_back(tmp_path):
    images, cams = two_camera_images(30, (32, 16))
    cams = np.where(np.arange(30) < 24, 0, 1)  # camera 0: 24 images, camera 1: 6
    message = site_style_message(images, cams, min_images=10)
    assert sorted(message) == ["cam0.amplitude", "cam0.count"]
    assert message["cam0.amplitude"].dtype == np.float32 and int(message["cam0.count"]) == 24
    save_style_message(tmp_path / "prid.npz", {f"prid.{k}": v for k, v in message.items()})
    bank = load_style_bank(tmp_path / "prid.npz")
    assert [s.name for s in bank] == ["prid.cam0"] and bank[0].count == 24
    with pytest.raises(ValueError, match="missing \\['count'\\]"):
        style_bank({"x.amplitude": message["cam0.amplitude"]})


def test_apply_style_moves_the_low_band_to_the_target_and_keeps_the_rest():
    images, cams = two_camera_images(16, (64, 32))
    red, blue = images[cams == 0], images[cams == 1]
    target = style_aggregate(blue, min_images=8)
    rendered = apply_style(red, target)
    assert rendered.dtype == torch.uint8 and rendered.shape == red.shape
    # mean colour follows the target camera (the zero frequency is in the band)
    assert rendered[:, 2].float().mean() > red[:, 2].float().mean() + 60
    assert rendered[:, 0].float().mean() < red[:, 0].float().mean() - 60
    unchanged = apply_style(red, target, strength=0.0)
    assert (unchanged.int() - red.int()).abs().max() <= 1


# ---- the commands ---------------------------------------------------------------------------------
def test_augment_and_styles_commands(tiny_site, tmp_path):
    site, _ = tiny_site
    app = typer.Typer()
    app.command("augment")(augment)
    app.command("styles")(styles)
    runner = CliRunner()
    out = tmp_path / "aug"
    args = ["augment", "--data", str(site), "--out", str(out), "--size", "32x16", "--iterations", "3",
            "--batch-size", "4", "--dim", "4", "--per-image", "1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert (out / "gan.pt").is_file() and "wrote" in first.output
    again = runner.invoke(app, args)  # finished checkpoint: loads, rewrites the copies
    assert again.exit_code == 0 and torch.load(out / "gan.pt", weights_only=False)["iteration"] == 3
    shared = runner.invoke(app, ["styles", "--data", str(site), "--out", str(tmp_path / "s.npz"),
                                 "--min-images", "5", "--size", "32x16", "--band", "3x2"])
    assert shared.exit_code == 0, shared.output
    assert "cam0.amplitude" in shared.output and (tmp_path / "s.npz").is_file()
    refused = runner.invoke(app, ["styles", "--data", str(site), "--out", str(tmp_path / "t.npz"),
                                  "--min-images", "1000"])
    assert refused.exit_code == 1 and "nothing to share" in refused.output


def test_the_commands_are_registered_under_site():
    from cli.main import app

    runner = CliRunner()
    for command in ("augment", "styles"):
        result = runner.invoke(app, ["site", command, "--help"])
        assert result.exit_code == 0 and "--data" in result.output, result.output
