"""IQAGA and DAPRH: their loss parts on hand-made cases (quality weight, softmax and soft
triplets, refined soft labels, the teacher's EMA), one training step of each on a tiny
generated site with camera-style copies, their guards, and both in one federated round."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clients.app import make_client_app
from fedreid.augment import GanOptions, train_camstyle_gan, write_camstyle_copies
from fedreid.augment.style import load_style_banks, save_style_message, site_style_message
from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.data.augment import normalize
from fedreid.data.batch import make_batch
from fedreid.data.records import DataError
from fedreid.data.split_images import load_split_images
from fedreid.data.synth import generate_synthetic8
from fedreid.losses import (
    FeatureNormQualityWeight,
    refined_soft_labels,
    soft_cross_entropy,
    soft_triplet_loss,
    softmax_triplet_losses,
)
from fedreid.methods.daprh import adapt_bn_statistics, ema_update
from fedreid.models import build_model
from fedreid.report import load_records
from fedreid.training import LocalTrainer
from server.app import run_server
from sims.inprocess_grid import InProcessGrid

SITES = ["market", "cuhk01"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """Two tiny sites, each with its own camera-style copies (a GAN of a few iterations)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=1, size=(32, 16), sites=SITES, min_test_ids=6, workers=1)
    for site in SITES:
        images = load_split_images(root / site, "fedreid", (32, 16))
        gan = train_camstyle_gan(images.train.images, images.train.camids,
                                 GanOptions(iterations=3, batch_size=4, dim=4, d_dim=4))
        write_camstyle_copies(root / site, images.train.samples, images.train.images, gan,
                              root / site / "augmented", per_image=1)
    return root


@pytest.fixture(scope="module")
def tiny_site(tiny_root):
    return load_split_images(tiny_root / "market", "fedreid", (32, 16))


def cfg_for(method, *extra):
    torch.set_num_threads(1)
    return load_config([f"method.name={method}", "device=cpu", "train.batch_size=16", "data.height=32",
                        "data.width=16", "method.daprh.eps=0.5", "method.daprh.min_samples=2",
                        "eval.batch_size=64", "model.arch=resnet18", *extra])


# ---- loss parts on hand-made cases -------------------------------------------------------------
def test_quality_weight_has_mean_one_and_stays_in_its_bounds():
    weight = FeatureNormQualityWeight(bound=0.4, h=0.333, momentum=0.99)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        feats = torch.randn(64, 32, generator=gen) * (1 + torch.rand(64, 1, generator=gen) * 3)
        w = weight(feats)
        assert 0.6 - 1e-6 <= w.min() and w.max() <= 1.4 + 1e-6
        assert abs(float(w.mean()) - 1.0) < 0.05
    norms = feats.norm(dim=1)
    assert w[norms.argmax()] > 1 > w[norms.argmin()]  # short features (poor images) weigh less
    steep = FeatureNormQualityWeight(bound=0.4, h=10.0)
    steep(feats)
    steep.eval()
    mean_before = steep.mean.clone()
    extreme = torch.cat([torch.zeros(1, 32) + 1e-3, torch.ones(1, 32) * 1e3])
    torch.testing.assert_close(steep(extreme), torch.tensor([0.6, 1.4]))  # clipped at the bounds
    torch.testing.assert_close(steep.mean, mean_before)  # eval mode leaves the statistics alone
    with pytest.raises(ValueError, match="bound"):
        FeatureNormQualityWeight(bound=1.2)


def test_softmax_triplet_with_zero_target_is_the_soft_margin_triplet():
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 5.0], [9.0, 9.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    losses, valid = softmax_triplet_losses(feats, labels)
    # anchor 0: d_ap = 1 (to 1), d_an = 3 (to 2); anchor 4 has no positive
    assert valid.tolist() == [True, True, True, True, False]
    torch.testing.assert_close(losses[0], F.softplus(torch.tensor(1.0 - 3.0)))
    assert losses[4] == 0
    m = 0.3
    with_target, _ = softmax_triplet_losses(feats, labels, m)
    log_p = F.log_softmax(torch.tensor([1.0, 3.0]), dim=0)
    torch.testing.assert_close(with_target[0], -(m * log_p[0] + (1 - m) * log_p[1]))


def test_soft_triplet_follows_the_teachers_confidence():
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 3.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    teacher = student.detach() * 2
    loss = soft_triplet_loss(student, teacher, labels)
    # anchor 0: positive 1, negative 2; student (1, 2), teacher (2, 4)
    p_t = F.softmax(torch.tensor([2.0, 4.0]), dim=0)
    anchor0 = -(p_t * F.log_softmax(torch.tensor([1.0, 2.0]), dim=0)).sum()
    per_anchor = []
    for a, p, n in [(0, 1, 2), (1, 0, 2), (2, 3, 0), (3, 2, 0)]:
        ds = torch.stack([(student[a] - student[p]).norm(), (student[a] - student[n]).norm()]).detach()
        per_anchor.append(-(F.softmax(2 * ds, dim=0) * F.log_softmax(ds, dim=0)).sum())
    torch.testing.assert_close(per_anchor[0], anchor0)
    torch.testing.assert_close(loss, torch.stack(per_anchor).mean())
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_refined_soft_labels_sum_to_one_and_ignore_unreliable_members():
    f = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0], [0.1, 0.99], [0.6, 0.8], [0.3, -1.0]])
    labels = np.array([0, 0, 0, 1, 1, 1, -1])  # member 5 of cluster 1 leans towards cluster 0
    refined = refined_soft_labels(f, labels, alpha=0.5, temperature=0.05, rho=0.5)
    torch.testing.assert_close(refined.targets[:6].sum(dim=1), torch.ones(6))
    assert refined.targets[6].sum() == 0  # the outlier has no target
    reliable = F.normalize(F.normalize(f[3:5], dim=1).mean(dim=0), dim=0)
    torch.testing.assert_close(refined.centres[1], reliable)  # member 5 (silhouette <= 0.5) left out
    hard = refined_soft_labels(f, labels, alpha=0.0)
    torch.testing.assert_close(hard.targets[:6], F.one_hot(torch.tensor(labels[:6]), 2).float())
    logits = torch.randn(6, 2)
    torch.testing.assert_close(soft_cross_entropy(logits, hard.targets[:6]),
                               F.cross_entropy(logits, torch.tensor(labels[:6]), reduction="none"))
    with pytest.raises(ValueError, match="two clusters"):
        refined_soft_labels(f, np.array([0, 0, 0, -1, -1, -1, -1]))


def test_the_teacher_is_an_exponential_moving_average():
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for old, new, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * s.detach())


def test_adapt_bn_takes_the_sites_statistics(tiny_site):
    model = build_model("resnet18").eval()
    probe = copy.deepcopy(model).train()
    assert len(tiny_site.train) <= 64  # one batch: the cumulative average is that batch's
    adapt_bn_statistics(model, tiny_site.train, 64, torch.device("cpu"))
    assert not model.training  # the model's mode is restored
    with torch.no_grad():
        feats = probe.backbone(normalize(tiny_site.train.images))
    torch.testing.assert_close(model.neck.running_mean, feats.mean(dim=0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.neck.running_var, feats.var(dim=0), rtol=1e-4, atol=1e-5)


# ---- iqaga on a tiny site --------------------------------------------------------------------
def test_iqaga_trains_on_real_and_generated_images(tiny_site):
    trainer = LocalTrainer(cfg_for("iqaga", "train.max_batches=2", "method.iqaga.fake_ratio=0.5"), tiny_site)
    method = trainer.method
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.train_epochs(1, seed=0)
    assert stats["batches"] > 0 and np.isfinite(stats["loss"]) and stats["copies_fraction"] > 0
    assert 0.6 <= stats["quality_weight_min"] <= stats["quality_weight_max"] <= 1.4
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    batch = make_batch(tiny_site.train, np.arange(16), method.batch_spec, torch.Generator().manual_seed(0),
                       torch.device("cpu"))
    real = batch.images.clone()
    swapped = method.swap_in_copies(batch)
    changed = (batch.images != real).flatten(1).any(dim=1).sum()
    assert swapped > 0 and int(changed) == swapped  # the trainer's batch holds what trained
    assert {"heads.classifier.weight", "heads.quality.mean"} <= set(method.local_state())


def test_iqaga_without_copies_needs_no_folder_and_with_copies_names_the_command(tiny_site, tmp_path):
    plain = LocalTrainer(cfg_for("iqaga", "train.max_batches=1", "method.iqaga.fake_ratio=0",
                                 f"method.iqaga.generated={tmp_path}/missing"), tiny_site)
    stats = plain.train_epochs(1, seed=0)
    assert stats["copies_fraction"] == 0
    with pytest.raises(DataError, match="fedreid site augment"):
        LocalTrainer(cfg_for("iqaga", f"method.iqaga.generated={tmp_path}/missing"), tiny_site)


def test_iqaga_leaves_out_the_copies_with_the_worst_pixel_score(tiny_site):
    full = LocalTrainer(cfg_for("iqaga", "method.iqaga.fake_ratio=0.5"), tiny_site).method.pool.generated
    kept = LocalTrainer(cfg_for("iqaga", "method.iqaga.fake_ratio=0.5", "method.iqaga.drop_worst=0.5"),
                        tiny_site).method.pool.generated
    assert len(kept) == len(full) - len(full) // 2
    assert kept.quality.min() >= np.median(full.quality)  # the lower half is what was dropped


def test_iqaga_renders_its_images_in_shared_styles(tiny_site, tiny_root, tmp_path):
    other = load_split_images(tiny_root / "cuhk01", "fedreid", (32, 16))
    message = site_style_message(other.train.images, other.train.camids, min_images=3, band=(3, 2))
    assert message
    save_style_message(tmp_path / "styles.npz", {f"cuhk01.{k}": v for k, v in message.items()})
    save_style_message(tmp_path / "other.npz", message)  # a second site's file, unprefixed keys
    files = f"{tmp_path}/styles.npz,{tmp_path}/other.npz"
    names = [s.name for s in load_style_banks(files)]
    assert len(names) == 2 * (len(message) // 2) and len(set(names)) == len(names)  # 2 files x cameras
    assert names[0].startswith("styles/cuhk01.") and names[-1].startswith("other/cam")
    trainer = LocalTrainer(cfg_for("iqaga", "method.iqaga.generated=''", f"method.iqaga.styles={files}",
                                   "method.iqaga.fake_ratio=1", "train.max_batches=1"), tiny_site)
    assert len(trainer.method.pool) == len(tiny_site.train)  # one render per image
    assert trainer.train_epochs(1, seed=0)["copies_fraction"] == 1.0


# ---- daprh on a tiny site --------------------------------------------------------------------
def test_daprh_trains_a_student_and_its_mean_teacher(tiny_site):
    trainer = LocalTrainer(cfg_for("daprh", "train.max_batches=2"), tiny_site)
    method = trainer.method
    stats = trainer.train_epochs(1, seed=0)
    assert stats["prep_clusters"] >= 2 and stats["batches"] > 0 and np.isfinite(stats["loss"])
    assert {"loss_id", "loss_kl", "loss_triplet", "loss_soft_triplet"} <= set(stats)
    assert stats["teacher_copies_fraction"] > 0
    k = method.num_clusters
    rows = method.cluster_labels >= 0
    torch.testing.assert_close(method.soft_targets[rows].sum(dim=1), torch.ones(int(rows.sum())))
    student = dict(method.model.named_parameters())
    moved = [name for name, p in method.teacher.named_parameters() if not torch.equal(p, student[name])]
    assert moved and method.ema_steps == stats["batches"]
    assert method.heads["classifier"].weight[:k].norm(dim=1).min() > 0
    assert method.crr_labels() is not None and "cluster_labels" in method.local_state()
    method.on_download({})
    assert method.teacher is None  # rebuilt from the next download


def test_daprh_guards_when_clustering_degenerates(tiny_site):
    no_id = LocalTrainer(cfg_for("daprh", "train.max_batches=1", "method.daprh.max_outlier_fraction=0"),
                         tiny_site).train_epochs(1, seed=0)
    assert no_id["prep_id_terms"] == 0 and "loss_id" not in no_id and no_id["batches"] > 0
    none = LocalTrainer(cfg_for("daprh", "method.daprh.min_samples=1000"), tiny_site).train_epochs(1, seed=0)
    assert none["prep_degenerate"] == 1 and none["batches"] == 0


def test_daprh_camstyle_teacher_view_needs_the_copies(tiny_site, tmp_path):
    with pytest.raises(DataError, match="fedreid site augment"):
        LocalTrainer(cfg_for("daprh", f"method.daprh.generated={tmp_path}/missing"), tiny_site)
    plain = LocalTrainer(cfg_for("daprh", f"method.daprh.generated={tmp_path}/missing",
                                 "method.daprh.teacher_view=augment", "train.max_batches=1"), tiny_site)
    assert plain.train_epochs(1, seed=0)["teacher_copies_fraction"] == 0
    with pytest.raises(ValueError, match="camstyle, augment"):
        LocalTrainer(cfg_for("daprh", "method.daprh.teacher_view=gan"), tiny_site)


# ---- both in one federation --------------------------------------------------------------------
def test_labelled_iqaga_and_unlabelled_daprh_sites_aggregate(tiny_root, tmp_path, task_identity):
    cfg = load_config([
        *strategy_overrides("fedklpr"), f"data.root={tiny_root}", f"data.sites=[{','.join(SITES)}]",
        "data.height=32", "data.width=16", "fl.rounds=1", "train.batch_size=16", "train.max_batches=1",
        "eval.batch_size=64", "method.daprh.eps=0.5", "method.daprh.min_samples=2", "crr.delta=1.0",
        "device=cpu", "fl.round_timeout=60", "model.arch=resnet18",
        "sites.market.method=daprh", "sites.cuhk01.method=iqaga",
    ])
    grid = InProcessGrid(make_client_app(cfg, state_dir=tmp_path / "s"),
                         {100 + i: {"partition-id": i} for i in range(len(SITES))})
    run_server(grid, cfg, tmp_path / "run", node_wait_s=1)
    records = load_records(tmp_path / "run")
    trains = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "evaluate"]
    assert evals and set(evals[-1]["sites"]) == set(SITES)  # both sites scored the global model
    assert len(trains) == 1 and not any(t["failures"] for t in trains)
    last = trains[-1]["sites"]
    assert last["market"]["method"] == "daprh" and last["cuhk01"]["method"] == "iqaga"
    assert "copies_fraction" in last["cuhk01"] and "loss_soft_triplet" in last["market"]
