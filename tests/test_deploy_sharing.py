"""Every message a site sends carries only the shared model arrays and scalar metrics.

The real ClientApp runs a small federation through the in-process grid; a wrapper records
each reply exactly as it would leave the site, and the test checks it against the contract
``fedreid site check`` prints (fedreid.deploy.sharing: the method's shared keys, scalar
metrics, the site's name and method) — and against the site's private state, which must
appear in no reply.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.app import make_client_app
from fedreid.client_state import ClientState
from fedreid.config import load_config
from fedreid.config.presets import strategy_overrides
from fedreid.data.synth import generate_synthetic8
from fedreid.fl.codec import SEP, SPARSE_PARTS
from server.app import initial_state, run_server
from sims.inprocess_grid import InProcessGrid

pytestmark = pytest.mark.usefixtures("task_identity")
SITES = ["market", "ilids"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate_synthetic8(root, scale=0.05, seed=0, size=(32, 16), sites=SITES, min_test_ids=6, workers=1)
    return root


def _record_replies(app, replies):
    def call(msg, context):
        reply = app(msg, context)
        replies.append(reply)
        return reply
    return call


def _content_problems(reply, shared_keys) -> list[str]:
    """What in a reply is not the contract: shared arrays (whole or sparse parts), scalar
    metrics, and for admission the site's name, method, backbone and array signature."""
    content = reply.content
    records = {**content.array_records, **content.metric_records, **content.config_records}
    problems = [f"unexpected record {k!r}" for k in records if k not in ("arrays", "metrics", "meta")]
    for key, array in content.array_records.get("arrays", {}).items():
        name, _, part = key.rpartition(SEP)
        if name not in shared_keys or part not in (*SPARSE_PARTS, "dense"):
            problems.append(f"array {key!r} is not part of the shared model")
        elif part == "bits" and array.numpy().dtype != np.uint8:
            problems.append(f"array {key!r} is not a uint8 bitmap")
    for key, value in content.metric_records.get("metrics", {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"metric {key!r} is not a scalar number")
    meta = set(content.config_records.get("meta", {}))
    allowed = ({"site", "method", "arch", "signature"} if reply.metadata.message_type == "query"
               else {"site", "method", "warnings"})
    problems += [f"meta carries {k!r}" for k in sorted(meta - allowed)]
    return problems


def test_sites_send_only_shared_arrays_and_scalars(tiny_data, tmp_path):
    """FedKLPR (sparse replies); market trains supervised (classifier head, centres), ilids
    unsupervised (pseudo-labels, proxy memory): both kinds of private state are covered."""
    torch.set_num_threads(1)
    cfg = load_config([
        *strategy_overrides("fedklpr"),
        f"data.root={tiny_data}", f"data.sites=[{','.join(SITES)}]", "data.height=32", "data.width=16",
        "fl.rounds=1", "train.batch_size=16", "train.max_batches=1", "eval.batch_size=64",
        "method.capr.eps=0.7", "method.capr.min_samples=2", "crr.delta=1.0", "device=cpu",
        "sim.client_cpus=1", "fl.round_timeout=60",
    ])
    replies: list = []
    app = _record_replies(make_client_app(cfg, state_dir=tmp_path / "state"), replies)
    methods = {"market": "bot", "ilids": "capr"}
    grid = InProcessGrid(app, {100 + i: {"partition-id": i, "method": methods[s]} for i, s in enumerate(SITES)})
    run_server(grid, cfg, tmp_path / "run", node_wait_s=1)

    shared = set(initial_state(cfg))
    kinds = [r.metadata.message_type for r in replies]
    assert kinds.count("train") == len(SITES) and kinds.count("evaluate") == 2 * len(SITES)
    assert kinds.count("query") == len(SITES)  # admission
    for reply in replies:
        assert not reply.has_error(), reply.error
        assert _content_problems(reply, shared) == [], reply.metadata.message_type
        if reply.metadata.message_type == "evaluate":
            assert "arrays" not in reply.content.array_records  # evaluation sends numbers only
    assert any(k.endswith("::bits") for r in replies for k in r.content.array_records.get("arrays", {}))

    # The private state exists at each site — and none of its arrays is in any reply.
    sent = [v.numpy() for r in replies for v in r.content.array_records.get("arrays", {}).values()]
    for site in SITES:
        arrays, _ = ClientState.load(tmp_path / "state" / f"{site}.pt").to_flat()
        # (The CRR backup is a copy of shared tensors before pruning, so its unpruned
        # tensors legitimately equal what is sent; the heads and labels must not.)
        private = {k: v for k, v in arrays.items() if k.startswith("method/")}
        wanted = "method/heads.classifier.weight" if methods[site] == "bot" else "method/cluster_labels"
        assert wanted in private, sorted(private)
        for key, value in private.items():
            value = np.asarray(value)
            if value.size < 5:
                continue  # a tiny array could coincide with a shape record by chance
            assert not any(s.shape == value.shape and np.array_equal(s, value) for s in sent), key
