"""The site gallery index: build, upgrade through a transfer, search, and crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.index import index_app
from fedreid.data.records import DataError
from fedreid.index import (
    ItemRecord,
    ModelRef,
    SiteIndex,
    Transfer,
    build_version,
    exact_topk,
    load_transfer,
    save_transfer,
    upgrade_features,
    upgrade_version,
)
from fedreid.index.backends import build_ivf, recall_at_k
from fedreid.index.extract import gallery_items
from fedreid.index.versions import version_dir, writer_lock
from fedreid.models import build_model

REPO = Path(__file__).resolve().parents[1]
DIM = 32
OLD = ModelRef("round-1", "resnet18", "sha256:0000000000000001", DIM)
NEW = ModelRef("round-2", "resnet18", "sha256:0000000000000002", DIM)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gallery(n: int = 300, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, list[ItemRecord]]:
    """``n`` vectors around n/5 identity centres, and their item records."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 5, dim))
    pids = np.arange(n) % (n // 5)
    feats = unit(centres[pids] + 0.3 * rng.standard_normal((n, dim)))
    items = [ItemRecord(f"gallery/{p:04d}/{i}.jpg", int(p), i % 3, 1_700_000_000.0 + i, "mtime")
             for i, p in enumerate(pids)]
    return feats, items


def rotation(dim: int = DIM, seed: int = 1) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))[0]


def rotate(dim: int = DIM) -> Transfer:
    r = rotation(dim)
    return Transfer(lambda x: x @ r, dim, dim, "rotation")


# ---- build, search, upgrade ---------------------------------------------------------------
def test_build_then_search_returns_each_item_with_its_metadata(tmp_path):
    feats, items = gallery()
    version = build_version(tmp_path / "ix", feats, items, OLD)

    with SiteIndex(tmp_path / "ix") as index:
        hits = index.search(feats[:20], k=3)
    assert (version.id, version.kind, version.count, version.search) == (1, "build", 300, "exact")
    assert hits.rows[:, 0].tolist() == list(range(20))
    np.testing.assert_allclose(hits.scores[:, 0], 1.0, atol=1e-5)
    assert hits.pids[:, 0].tolist() == [items[i].pid for i in range(20)]
    assert hits.keys[5][0] == items[5].key and hits.camids[5, 0] == items[5].camid
    assert hits.capture_times[5, 0] == items[5].capture_time and hits.hops[:, 0].max() == 0


def test_build_refuses_unpaired_rows_wrong_widths_and_repeated_keys(tmp_path):
    feats, items = gallery()
    with pytest.raises(ValueError, match="300 feature rows but 299 items"):
        build_version(tmp_path / "ix", feats, items[:-1], OLD)
    with pytest.raises(ValueError, match="features are 16-d but model 'round-1' gives 32-d"):
        build_version(tmp_path / "ix", feats[:, :16], items, OLD)
    with pytest.raises(ValueError, match="two items share a key"):
        build_version(tmp_path / "ix", feats, [*items[:-1], items[0]], OLD)
    with pytest.raises(ValueError, match="rows are all zeros"):
        build_version(tmp_path / "ix", np.zeros_like(feats), items, OLD)


def test_upgrade_maps_the_gallery_into_the_new_space_and_keeps_the_old_version(tmp_path):
    feats, items = gallery()
    build_version(tmp_path / "ix", feats, items, OLD)
    queries = torch.from_numpy(feats[:10]) + 0.05
    queries = torch.nn.functional.normalize(queries, dim=1)
    r = rotation()

    version = upgrade_version(tmp_path / "ix", rotate(), NEW, transfer_name="rotation")

    with SiteIndex(tmp_path / "ix") as index:
        before = index.search(queries, k=5, version_id=1)
        after = index.search(queries @ r, k=5)  # new-model queries against the upgraded gallery
        stored = index.gallery()
    assert (version.id, version.parent, version.kind, version.model) == (2, 1, "upgrade", 2)
    assert after.version == 2 and after.rows.tolist() == before.rows.tolist()
    np.testing.assert_allclose(stored.features, feats @ r.numpy(), atol=1e-5)
    assert stored.hops.tolist() == [1] * 300 and set(stored.source_models.tolist()) == {1}
    assert stored.keys == [item.key for item in items]


def test_reindex_is_a_new_build_that_keeps_item_identities(tmp_path):
    feats, items = gallery()
    build_version(tmp_path / "ix", feats, items, OLD)
    build_version(tmp_path / "ix", unit(feats @ rotation().numpy()), items, NEW)

    with SiteIndex(tmp_path / "ix") as index:
        first, second = index.gallery(1), index.gallery(2)
        item_ids = index.store.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    assert second.version.kind == "build" and second.version.parent == 1
    assert first.keys == second.keys and item_ids == 300
    assert second.hops.max() == 0 and set(second.source_models.tolist()) == {2}


def test_alpha_fusion_mixes_transferred_and_stored_features():
    g = torch.nn.functional.normalize(torch.randn(50, DIM), dim=1)
    r = rotation()

    pure = upgrade_features(g, lambda x: x @ r, alpha=1.0, batch_size=7)
    none = upgrade_features(g, lambda x: x @ r, alpha=0.0)
    half = upgrade_features(g, lambda x: 2.0 * (x @ r), alpha=0.5)  # scale of T(G) must not matter

    np.testing.assert_allclose(pure, (g @ r).numpy(), atol=1e-5)
    np.testing.assert_allclose(none, g.numpy(), atol=1e-6)
    mid = (g @ r + g) / torch.linalg.norm(g @ r + g, dim=1, keepdims=True)
    np.testing.assert_allclose(half, mid.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)


def test_alpha_below_one_needs_equal_widths_and_alpha_must_be_a_weight():
    g = torch.nn.functional.normalize(torch.randn(8, DIM), dim=1)
    widen = torch.nn.Linear(DIM, 48)
    assert upgrade_features(g, widen, alpha=1.0).shape == (8, 48)
    with pytest.raises(ValueError, match="needs equal widths"):
        upgrade_features(g, widen, alpha=0.5)
    with pytest.raises(ValueError, match=r"alpha=1.5"):
        upgrade_features(g, widen, alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        upgrade_features(g, lambda x: x * float("nan"))


def test_upgrade_refuses_wrong_widths_and_an_upgrade_to_the_same_model(tmp_path):
    feats, items = gallery()
    build_version(tmp_path / "ix", feats, items, OLD)
    narrow = Transfer(lambda x: x[:, :16], 16, 16, "narrow")
    wide_model = ModelRef("wide", "resnet50", "sha256:0000000000000003", 2048)

    with pytest.raises(ValueError, match="takes 16-d features but version 1 stores 32-d"):
        upgrade_version(tmp_path / "ix", narrow, NEW, transfer_name="narrow")
    with pytest.raises(ValueError, match="gives 32-d features but model 'wide' gives 2048-d"):
        upgrade_version(tmp_path / "ix", rotate(), wide_model, transfer_name="rotation")
    with pytest.raises(ValueError, match="already in model 'round-1'"):
        upgrade_version(tmp_path / "ix", rotate(), OLD, transfer_name="rotation")
    with SiteIndex(tmp_path / "ix") as index:
        assert [v.id for v in index.store.versions()] == [1]


def test_search_errors_name_the_problem(tmp_path):
    feats, items = gallery()
    build_version(tmp_path / "ix", feats, items, OLD)

    with pytest.raises(DataError, match="no site index there"):
        SiteIndex(tmp_path / "missing")
    with SiteIndex(tmp_path / "ix") as index:
        with pytest.raises(ValueError, match=r"unknown index version 7 .*\(versions: 1\)"):
            index.search(feats[:2], version_id=7)
        with pytest.raises(ValueError, match=r"\(2, 16\) but version 1 stores 32-d"):
            index.search(feats[:2, :16])
        with pytest.raises(ValueError, match="query model is sha256:0000000000000002"):
            index.check_model(NEW.digest)
        index.check_model(OLD.digest)


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    feats, items = gallery()
    with writer_lock(tmp_path / "ix"):
        with pytest.raises(ValueError, match="another build or upgrade is writing"):
            build_version(tmp_path / "ix", feats, items, OLD)


def test_keep_prunes_the_oldest_versions_and_their_folders(tmp_path):
    feats, items = gallery()
    root = tmp_path / "ix"
    build_version(root, feats, items, OLD)
    upgrade_version(root, rotate(), NEW, transfer_name="rotation")
    third = ModelRef("round-3", "resnet18", "sha256:0000000000000004", DIM)

    upgrade_version(root, rotate(), third, transfer_name="rotation", keep=2)

    with SiteIndex(root) as index:
        assert [v.id for v in index.store.versions()] == [2, 3]
        assert index.gallery().hops.max() == 2
    assert not version_dir(root, 1).exists() and version_dir(root, 3).is_dir()


def test_ivf_search_reaches_the_recall_it_was_calibrated_to(tmp_path):
    feats, items = gallery(n=4000)
    queries = torch.nn.functional.normalize(torch.from_numpy(feats[::40]) + 0.02, dim=1)

    version = build_version(tmp_path / "ix", feats, items, OLD, search="ivf")

    with SiteIndex(tmp_path / "ix") as index:
        hits = index.search(queries, k=10)
    _, truth = exact_topk(feats, queries, 10)
    assert version.search == "ivf" and version.nlist == 64 and version.recall >= 0.95
    assert recall_at_k(hits.rows, truth) >= 0.9


def test_ivf_refuses_a_gallery_too_small_for_its_lists():
    with pytest.raises(ValueError, match="use search='exact'"):
        build_ivf(gallery(n=50)[0])


def test_exact_topk_over_chunks_equals_one_matmul():
    g = torch.nn.functional.normalize(torch.randn(1000, DIM), dim=1)
    q = torch.nn.functional.normalize(torch.randn(7, DIM), dim=1)

    scores, rows = exact_topk(g, q, 5, chunk=64)

    ref = (q @ g.T).topk(5, dim=1)
    np.testing.assert_allclose(scores, ref.values.numpy(), atol=1e-6)
    assert rows.tolist() == ref.indices.tolist()


def test_transfer_file_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(DIM, 16), torch.nn.BatchNorm1d(16), torch.nn.PReLU(),
                              torch.nn.Linear(16, 24))
    x = torch.randn(5, DIM)

    loaded = load_transfer(save_transfer(net, DIM, tmp_path / "t.pt2"))

    assert (loaded.in_dim, loaded.out_dim) == (DIM, 24) and loaded.name.startswith("t.pt2@")
    torch.testing.assert_close(loaded(x), net.eval()(x))
    assert loaded(torch.randn(1, DIM)).shape == (1, 24)
    (tmp_path / "junk.pt2").write_bytes(b"not a transfer")
    with pytest.raises(ValueError, match="not a transfer written by"):
        load_transfer(tmp_path / "junk.pt2")
    with pytest.raises(ValueError, match="no such file"):
        load_transfer(tmp_path / "none.pt2")


# ---- crash safety: kill a real upgrade process --------------------------------------------
_CHILD = """
import sys, time
from pathlib import Path
import torch
import fedreid.index.backends as backends
from fedreid.index import ModelRef, Transfer, upgrade_version
from fedreid.index.store import IndexStore

root, point, flag = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def pause():
    flag.touch()
    time.sleep(120)

def after(fn):  # pause once fn has run (the vectors file is written, not yet renamed)
    def wrapped(*a, **k):
        out = fn(*a, **k)
        pause()
        return out
    return wrapped

def before(fn):
    def wrapped(*a, **k):
        pause()
        return fn(*a, **k)
    return wrapped

if point == "writing":
    backends.save_vectors = after(backends.save_vectors)
elif point == "renamed":  # folder in place, its rows not committed
    IndexStore.commit_version = before(IndexStore.commit_version)
elif point == "committing":  # inside the transaction: rows inserted, COMMIT not reached
    IndexStore._set_current = before(IndexStore._set_current)
dim = int(sys.argv[4])
r = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(1)))[0]
new = ModelRef("round-2", "resnet18", "sha256:0000000000000002", dim)
upgrade_version(root, Transfer(lambda x: x @ r, dim, dim, "rotation"), new, transfer_name="rotation")
flag.with_suffix(".done").touch()
"""


def _start_upgrade(root: Path, point: str, flag: Path, dim: int = DIM) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(root), point, str(flag), str(dim)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the upgrade process ended early:\n{proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the upgrade process never reached its pause point")
        time.sleep(0.05)


def test_upgrades_killed_before_their_switch_leave_the_previous_version_usable(tmp_path):
    """Kill points: the vectors written but the folder not renamed; the folder in place but no
    row committed; inside the transaction before COMMIT. The three run side by side."""
    points = ("writing", "renamed", "committing")
    feats, items = gallery()
    runs = {}
    for point in points:
        root = tmp_path / point
        build_version(root, feats, items, OLD)
        runs[point] = (root, tmp_path / f"{point}.paused")
    with SiteIndex(tmp_path / "writing") as index:
        expected = index.search(feats[:30], k=5)
    procs = {point: _start_upgrade(root, point, flag) for point, (root, flag) in runs.items()}

    for point, proc in procs.items():
        _wait_for(runs[point][1], proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    for point, (root, _) in runs.items():
        leftovers = sorted(p.name for p in (root / "versions").iterdir())
        with SiteIndex(root) as index:
            assert index.version().id == 1 and [v.id for v in index.store.versions()] == [1], point
            hits = index.search(feats[:30], k=5)
        assert hits.rows.tolist() == expected.rows.tolist(), point
        np.testing.assert_array_equal(hits.scores, expected.scores)
        partial = "v000002.partial" if point == "writing" else "v000002"
        assert leftovers == ["v000001", partial], point
        version = upgrade_version(root, rotate(), NEW, transfer_name="rotation")  # the next writer recovers
        assert version.id == 2, point
        assert sorted(p.name for p in (root / "versions").iterdir()) == ["v000001", "v000002"], point


@pytest.mark.slow
def test_upgrades_killed_at_random_moments_always_leave_one_complete_version(tmp_path):
    rng = random.Random(0)
    n, dim = 200_000, 64
    feats, items = gallery(n=n, dim=dim)
    queries = torch.from_numpy(feats[:50])
    expected = {1: exact_topk(feats, queries, 5)[1]}
    expected[2] = exact_topk(unit(feats @ rotation(dim).numpy()), queries @ rotation(dim), 5)[1]
    for attempt in range(4):
        root = tmp_path / f"ix{attempt}"
        build_version(root, feats, items, ModelRef("round-1", "resnet18", OLD.digest, dim))
        proc = _start_upgrade(root, "none", tmp_path / f"flag{attempt}", dim)
        time.sleep(rng.uniform(2.0, 8.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()

        with SiteIndex(root) as index:
            current = index.version().id
            q = queries if current == 1 else queries @ rotation(dim)
            assert index.search(q, k=5).rows.tolist() == expected[current].tolist()


# ---- from images: capture times and the command line ----------------------------------------
def _noise_site(root: Path, meta_images: dict | None = None) -> Path:
    """A FedReID-layout site of noise images: 3 ids × 2 cameras × 2 in the gallery, 2 queries."""
    rng = np.random.default_rng(0)
    files = [f"gallery/{pid:04d}/{pid:04d}_c{cam}s1_{i:06d}_00.jpg"
             for pid in (1, 2, 3) for cam in (1, 2) for i in (10, 20)]
    files += ["query/0001/0001_c1s1_000030_00.jpg", "query/0002/0002_c2s1_000030_00.jpg"]
    files += ["train_all/0009/0009_c1s1_000001_00.jpg"]
    for name in files:
        path = root / "pytorch" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(path, quality=100)
    if meta_images is not None:
        (root / "meta.json").write_text(json.dumps({"images": meta_images}))
    return root


def test_capture_time_comes_from_meta_json_else_the_file_mtime(tmp_path):
    key = "gallery/0001/0001_c1s1_000010_00.jpg"
    site = _noise_site(tmp_path / "site", {key: {"capture_time": "2025-03-01T14:05:00"}})

    samples, records = gallery_items(site)

    by_key = {r.key: r for r in records}
    meta = by_key["pytorch/" + key]
    other = by_key["pytorch/gallery/0002/0002_c2s1_000020_00.jpg"]
    assert len(records) == 12 and (meta.pid, meta.camid) == (1, 0)
    assert (meta.capture_time, meta.time_source) == (1740837900.0, "meta")
    path = next(s.path for s in samples if s.path.endswith("0002_c2s1_000020_00.jpg"))
    assert other.time_source == "mtime" and other.capture_time == os.stat(path).st_mtime
    (site / "meta.json").write_text(json.dumps({"images": {key: {"capture_time": "yesterday"}}}))
    with pytest.raises(DataError, match="'yesterday'.*ISO 8601"):
        gallery_items(site)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save({"model": build_model("mobilenet_v2", "none").state_dict(), "arch": "mobilenet_v2"},
                   folder / f"round{seed}.pt")
    r = torch.nn.Linear(1280, 1280, bias=False)
    torch.nn.init.orthogonal_(r.weight)
    save_transfer(r, 1280, folder / "t01.pt2")
    save_transfer(torch.nn.Linear(16, 1280), 16, folder / "t16.pt2")
    return folder


def test_cli_build_search_upgrade_stats_and_errors(tmp_path, checkpoints):
    runner = CliRunner()
    site = _noise_site(tmp_path / "site")
    ix = str(tmp_path / "ix")
    probe = site / "pytorch/gallery/0002/0002_c1s1_000020_00.jpg"
    size = ["--size", "32x16"]

    built = runner.invoke(index_app, ["build", str(site), "--index", ix,
                                      "--weights", str(checkpoints / "round0.pt"), *size])
    found = runner.invoke(index_app, ["search", str(probe), "--index", ix, "--weights",
                                      str(checkpoints / "round0.pt"), "-k", "3", "--json",
                                      str(tmp_path / "hits.json"), *size])
    upgraded = runner.invoke(index_app, ["upgrade", "--index", ix, "--transfer", str(checkpoints / "t01.pt2"),
                                         "--to-weights", str(checkpoints / "round1.pt")])
    stale = runner.invoke(index_app, ["search", str(probe), "--index", ix, "--weights",
                                      str(checkpoints / "round0.pt"), *size])
    stats = runner.invoke(index_app, ["stats", "--index", ix, "--json"])
    missing = runner.invoke(index_app, ["stats", "--index", str(tmp_path / "nothing")])
    width = runner.invoke(index_app, ["upgrade", "--index", ix, "--transfer", str(checkpoints / "t16.pt2"),
                                      "--to-weights", str(checkpoints / "round0.pt")])
    version = runner.invoke(index_app, ["search", str(site / "pytorch/query"), "--index", ix, "--weights",
                                        str(checkpoints / "round0.pt"), "--version", "9"])

    assert built.exit_code == 0, built.output
    assert "version 1: 12 images of 3 identities" in built.output
    assert found.exit_code == 0, found.output
    top = json.loads((tmp_path / "hits.json").read_text())["results"][0]["matches"][0]
    assert top["item"] == "pytorch/gallery/0002/0002_c1s1_000020_00.jpg" and top["pid"] == 2
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert upgraded.exit_code == 0, upgraded.output
    assert "version 2 (upgrade of 1" in upgraded.output
    assert stale.exit_code == 2 and "search version 1, which is in that model's space" in stale.output
    info = json.loads(stats.output)
    assert info["current"] == 2 and [v["kind"] for v in info["versions"]] == ["build", "upgrade"]
    assert [m["name"] for m in info["models"]] == ["round0", "round1"]
    assert missing.exit_code == 2 and "no site index there" in missing.output
    assert width.exit_code == 2 and "takes 16-d features but version 2 stores 1280-d" in width.output
    assert version.exit_code == 2 and "unknown index version 9" in version.output
