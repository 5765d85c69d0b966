"""FedKLPR and its baselines as one Flower strategy (Message API, subclass of ``FedAvg``).

Flower's ``FedAvg`` averages one dense ArrayRecord per reply, waits forever for nodes, and
has no resume. This strategy keeps Flower's messages and sampling defaults but:

- sends each site its personalised sparse model (global ⊙ that site's last mask);
- validates every reply (shapes, dtypes, finiteness, bitmap vs values, declared sparsity,
  update norm) and drops a bad one with the site and the reason logged;
- weights sites by KLPWA / sample counts / CDW and averages with SAS (``fedreid.fl``);
- counts the bytes of every serialized array it sends and receives;
- checkpoints after every round and can start at any round (``start_round``).

The maths lives in :mod:`fedreid.fl`; this module only adapts Flower messages to it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from fedreid.config.schema import FedReIDConfig
from fedreid.fl.accounting import serialized_nbytes
from fedreid.fl.admission import admission_problems, signature_of
from fedreid.fl.codec import decode_sparse, encode_sparse, npy_view, validate_encoded
from fedreid.fl.dp import NoiseScale, add_noise, gaussian_epsilon
from fedreid.fl.sas import SasAccumulator
from fedreid.fl.weights import site_weights
from fedreid.report import RunRecorder
from wire.records import arrays_to_record, record_nbytes

REQUIRED_TRAIN_METRICS = ("num-examples", "prune_ratio", "kl_divergence", "cosine_distance")
SIGNAL_TOLERANCE = 1e-9  # divergences this far below 0 are float rounding, not a bad site
ProgressFn = Callable[[str, int, int, str], None]  # phase, done, total, last site


@dataclass
class ValidatedUpdate:
    node_id: int
    site: str
    method: str
    arrays: dict[str, np.ndarray]  # validated wire form; SAS folds it in without decoding
    metrics: dict[str, float]
    nbytes: int


@dataclass
class StrategyState:
    """Everything the server must remember between rounds (checkpointed)."""

    global_state: dict[str, np.ndarray]
    site_masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    node_site: dict[int, str] = field(default_factory=dict)
    last_round: int = 0


def site_means(sites: dict[str, dict[str, float]]) -> dict[str, float]:
    """Means over the sites that report them: ``mean_<k>`` of each ``global_<k>`` and
    ``mean_personal_<k>`` of each ``personal_<k>`` (plain, re-ranked and protocol figures)."""
    keys = sorted({k for m in sites.values() for k in m if k.startswith(("global_", "personal_"))})
    out = {}
    for key in keys:
        values = [m[key] for m in sites.values() if key in m]
        name = key[len("global_"):] if key.startswith("global_") else key
        out[f"mean_{name}"] = float(np.mean(values))
    return out


class FedReIDStrategy(FedAvg):
    """One strategy class; ``cfg.fl.strategy`` presets select FedKLPR or a baseline."""

    def __init__(self, cfg: FedReIDConfig, initial_state: dict[str, np.ndarray], *,
                 num_sites: int, recorder: RunRecorder | None = None,
                 on_round_end: Callable[[int, StrategyState], None] | None = None,
                 progress: ProgressFn | None = None, node_wait_s: float = 120.0):
        min_sites = cfg.fl.min_sites or num_sites
        super().__init__(fraction_train=cfg.fl.fraction_train, fraction_evaluate=1.0,
                         min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=min_sites)
        self.cfg = cfg
        self.num_sites = num_sites
        self.min_sites = min_sites
        self.state = StrategyState(global_state={k: np.array(v) for k, v in initial_state.items()})
        self.shapes = {k: tuple(v.shape) for k, v in initial_state.items()}
        self.dtypes = {k: v.dtype for k, v in initial_state.items()}
        # What one dense copy of the model costs on the wire; fixed by shapes and dtypes.
        self.dense_nbytes = serialized_nbytes(initial_state)
        self.recorder = recorder
        self.on_round_end = on_round_end
        self.progress = progress
        self.node_wait_s = node_wait_s
        self.rng = np.random.default_rng(cfg.seed)
        self.signature = signature_of(initial_state)
        self.refused: dict[int, str] = {}  # node -> why it may not take part (logged once)
        self._round_bytes_down = 0
        self._round_dense_down = 0

    # ---- admission and sampling with a deadline ---------------------------------------
    def _admit_new_nodes(self, grid: Grid, nodes: list[int], timeout: float) -> None:
        """Ask each node not yet admitted or refused which site it is and what it would send;
        admit it when it is one of the run's sites and its arrays fit the global model."""
        new = [n for n in nodes if n not in self.state.node_site and n not in self.refused]
        if not new:
            return
        msgs = [Message(content=RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY,
                        dst_node_id=n) for n in new]
        for reply in self.exchange(grid, msgs, timeout, "admission"):
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                continue  # asked again before the next round
            meta = reply.content.config_records.get("meta", {})
            site, method = str(meta.get("site", f"node-{node}")), str(meta.get("method", "?"))
            try:
                signature = {k: (tuple(v[0]), str(v[1])) for k, v in json.loads(str(meta["signature"])).items()}
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                signature, problems = {}, [f"unreadable admission reply ({exc})"]
            else:
                problems = admission_problems(site, method, str(meta.get("arch", "?")), signature,
                                              self.signature, self.cfg.data.sites)
            taken = [n for n, s in self.state.node_site.items() if s == site and n in nodes and n != node]
            if not problems and taken:
                problems = [f"site {site!r} already takes part as node {taken[0]}"]
            if problems:
                self.refused[node] = "; ".join(problems)
                log(WARNING, "site %s (node %s) refused: %s", site, node, self.refused[node])
                if self.recorder:
                    self.recorder.log("admission", self.state.last_round, site=site, node=node,
                                      method=method, refused=self.refused[node])
            else:
                self.state.node_site[node] = site

    def _sample(self, grid: Grid, fraction: float) -> list[int]:
        """Wait (bounded) for ``min_sites`` admitted sites, then sample; never hang on a dead node."""
        deadline = time.monotonic() + self.node_wait_s
        asked: set[int] = set()  # a node silent to one admission query is asked again next phase
        while True:
            nodes = sorted(grid.get_node_ids())
            fresh = [n for n in nodes if n not in asked]
            asked.update(fresh)
            self._admit_new_nodes(grid, fresh, max(1.0, deadline - time.monotonic()))
            admitted = [n for n in nodes if n in self.state.node_site]
            if len(admitted) >= self.min_sites or time.monotonic() >= deadline:
                break
            missing = sorted(set(self.cfg.data.sites) - {self.state.node_site[n] for n in admitted})
            log(INFO, "waiting for sites: %d of %d admitted (missing: %s)", len(admitted),
                self.min_sites, ", ".join(missing) or "?")
            time.sleep(1.0)
        if not admitted:
            raise RuntimeError(
                f"no site admitted within {self.node_wait_s:.0f} s (refused: {len(self.refused)}); "
                "start the sites (`fedreid site join`) or raise the wait"
            )
        if len(admitted) < self.min_sites:
            log(WARNING, "proceeding with %d of %d wanted sites after %.0f s",
                len(admitted), self.min_sites, self.node_wait_s)
        size = max(1, int(round(len(admitted) * fraction)))
        # Sample positions in site order, not node ids: node ids are random per run (and up to
        # 2**64, which numpy would turn into floats); the same seed must pick the same sites.
        admitted.sort(key=lambda n: (self.state.node_site[n], n))
        picked = self.rng.choice(len(admitted), size=size, replace=False)
        return sorted(int(admitted[i]) for i in picked)

    # ---- train ---------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config["server-round"] = server_round
        messages = []
        self._round_bytes_down = 0
        self._round_dense_down = 0
        for node in self._sample(grid, self.cfg.fl.fraction_train):
            site = self.state.node_site.get(node)
            masks = self.state.site_masks.get(site, {}) if site else {}
            record = self._personalised_record(masks)
            self._round_bytes_down += record_nbytes(record)
            self._round_dense_down += self.dense_nbytes
            content = RecordDict({"arrays": record, "config": ConfigRecord(dict(config))})
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        return messages

    def _personalised_record(self, masks: dict[str, np.ndarray]) -> ArrayRecord:
        """global ⊙ mask, sparse-encoded: a pruned site downloads only what it keeps."""
        encoded = encode_sparse(self.state.global_state, masks, value_dtype=self.cfg.codec.value_dtype)
        return arrays_to_record(encoded)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted, failures = self._accept_train_replies(replies)
        round_record: dict[str, Any] = {
            "failures": failures,
            "bytes_down": self._round_bytes_down,
            "bytes_up": sum(r.nbytes for r in accepted),
        }
        if not accepted:
            log(WARNING, "round %d: no acceptable reply; the global model is unchanged", server_round)
            self._finish_round(server_round, round_record, accepted, np.zeros(0))
            return None, None
        weights = self._weights(accepted)
        acc = SasAccumulator(self.state.global_state, mask_aware=self.cfg.agg.sas)
        noise = NoiseScale(self.state.global_state, self.cfg.agg.sas) if self.cfg.dp.enabled else None
        for reply, w in zip(accepted, weights, strict=True):
            masks = acc.add_encoded(reply.arrays, float(w))
            if masks:
                self.state.site_masks[reply.site] = masks
            if noise is not None:
                noise.add(float(w), masks)
        self.state.global_state = acc.result()
        if noise is not None:
            round_record.update(self._add_dp_noise(noise, server_round))
        self._finish_round(server_round, round_record, accepted, weights)
        metrics = MetricRecord({
            "mean_prune_ratio": float(np.mean([r.metrics["prune_ratio"] for r in accepted])),
            "sites": len(accepted),
        })
        return arrays_to_record(self.state.global_state), metrics

    def _add_dp_noise(self, noise: NoiseScale, server_round: int) -> dict[str, float]:
        dp = self.cfg.dp
        self.state.global_state, top_std = add_noise(
            self.state.global_state, noise.scales(), dp.noise_multiplier, dp.clipping_norm, self.rng)
        epsilon = gaussian_epsilon(dp.noise_multiplier, server_round, dp.delta)
        log(INFO, "round %d: DP noise added (largest std %.4g); ε = %.3g at δ = %g after %d rounds",
            server_round, top_std, epsilon, dp.delta, server_round)
        return {"dp_noise_std_max": top_std, "dp_epsilon": epsilon}

    def _accept_train_replies(self, replies: Iterable[Message]) -> tuple[list[ValidatedUpdate], list[dict]]:
        accepted: list[ValidatedUpdate] = []
        failures: list[dict] = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            site = self.state.node_site.get(node, f"node-{node}")
            if msg.has_error():
                failures.append({"site": site, "node": node, "reason": f"error {msg.error.code}: {msg.error.reason}"[:500]})
                continue
            try:
                reply = self._decode_reply(msg)
            except ValueError as exc:
                failures.append({"site": site, "node": node, "reason": str(exc)[:500]})
                continue
            admitted = self.state.node_site.get(node)
            if admitted is not None and reply.site != admitted:
                failures.append({"site": admitted, "node": node,
                                 "reason": f"reply claims site {reply.site!r}, admitted as {admitted!r}"})
                continue
            accepted.append(reply)
        for f in failures:
            log(WARNING, "rejected reply from site %s (node %s): %s", f["site"], f["node"], f["reason"])
        return accepted, failures

    def _decode_reply(self, msg: Message) -> ValidatedUpdate:
        content = msg.content
        if "arrays" not in content.array_records or "metrics" not in content.metric_records:
            raise ValueError("reply lacks the 'arrays' ArrayRecord or the 'metrics' MetricRecord")
        meta = content.config_records.get("meta")
        site = str(meta["site"]) if meta and "site" in meta else f"node-{msg.metadata.src_node_id}"
        method = str(meta["method"]) if meta and "method" in meta else "?"
        metrics = dict(content["metrics"])
        for key in REQUIRED_TRAIN_METRICS:
            value = metrics.get(key)
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"metric {key!r} is missing or not finite: {value!r}")
        if metrics["num-examples"] <= 0:
            raise ValueError(f"num-examples must be positive, got {metrics['num-examples']}")
        for key in ("kl_divergence", "cosine_distance"):
            if metrics[key] < -SIGNAL_TOLERANCE:
                raise ValueError(f"metric {key!r} must be >= 0, got {metrics[key]}")
            metrics[key] = max(0.0, float(metrics[key]))
        if not 0.0 <= metrics["prune_ratio"] <= 1.0:
            raise ValueError(f"prune_ratio must lie in [0, 1], got {metrics['prune_ratio']}")
        record = content["arrays"]
        if any(a.stype != "numpy.ndarray" for a in record.values()):
            raise ValueError("reply arrays must be serialised as 'numpy.ndarray'")
        arrays = {k: npy_view(a.data) for k, a in record.items()}  # zero-copy views
        declared = float(metrics["prune_ratio"]) if any(k.endswith("::bits") for k in arrays) else None
        problems = validate_encoded(arrays, self.shapes, declared_sparsity=declared, tol=1e-4,
                                    expected_dtypes=self.dtypes)
        if not problems and self.cfg.agg.max_update_norm > 0:
            problems = self._norm_problems(arrays)
        if problems:
            raise ValueError("; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
        return ValidatedUpdate(node_id=int(msg.metadata.src_node_id), site=site, method=method, arrays=arrays,
                         metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                         nbytes=record_nbytes(record))

    def _norm_problems(self, arrays: dict[str, np.ndarray]) -> list[str]:
        state, _ = decode_sparse(arrays)
        sq = 0.0
        for k, v in state.items():
            if v.dtype.kind == "f" and not k.endswith(("running_mean", "running_var")):
                sq += float(np.sum((v.astype(np.float32) - self.state.global_state[k]) ** 2))
        norm = float(np.sqrt(sq))
        limit = self.cfg.agg.max_update_norm
        return [f"update norm {norm:.4g} exceeds agg.max_update_norm={limit:.4g}"] if norm > limit else []

    def _weights(self, accepted: list[ValidatedUpdate]) -> np.ndarray:
        a = self.cfg.agg

        def signal(key: str) -> list[float]:
            return [r.metrics[key] for r in accepted]

        return site_weights(a.weighting, num_examples=signal("num-examples"),
                            kl_divergence=signal("kl_divergence"),
                            cosine_distance=signal("cosine_distance"),
                            prune_ratio=signal("prune_ratio"), klaw_sign=a.klaw_sign,
                            praw_form=a.praw_form, combine=a.combine, beta=a.beta)

    def _finish_round(self, server_round: int, record: dict, accepted: list[ValidatedUpdate],
                      weights: np.ndarray) -> None:
        self.state.last_round = server_round
        sites = {r.site: {**r.metrics, "method": r.method, "weight": float(w), "bytes_up": r.nbytes}
                 for r, w in zip(accepted, weights, strict=True)}
        record.update({
            "sites": sites,
            "dense_bytes": self._round_dense_down + len(accepted) * self.dense_nbytes,
            "mean_prune_ratio": float(np.mean([r.metrics["prune_ratio"] for r in accepted])) if accepted else 0.0,
            "mean_loss": float(np.mean([r.metrics.get("loss", np.nan) for r in accepted])) if accepted else float("nan"),
        })
        if self.recorder:
            self.recorder.log("train", server_round, **record)
        if self.on_round_end:
            self.on_round_end(server_round, self.state)

    # ---- evaluate ------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        config["server-round"] = server_round
        record = arrays_to_record(encode_sparse(self.state.global_state, {}))
        content = RecordDict({"arrays": record, "config": ConfigRecord(dict(config))})
        return [Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=n)
                for n in self._sample(grid, 1.0)]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        sites: dict[str, dict[str, float]] = {}
        failures = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                failures.append({"node": node, "reason": f"error {msg.error.code}: {msg.error.reason}"[:500]})
                continue
            meta = msg.content.config_records.get("meta")
            site = str(meta["site"]) if meta and "site" in meta else f"node-{node}"
            self.state.node_site.setdefault(node, site)
            sites[site] = {k: float(v) for k, v in msg.content["metrics"].items()
                           if isinstance(v, (int, float))}
        means = site_means(sites)
        for f in failures:
            log(WARNING, "evaluation failed at node %s: %s", f["node"], f["reason"])
        if self.recorder:
            self.recorder.log("evaluate", server_round, sites=sites, failures=failures, **means)
        return MetricRecord(means) if sites else None

    # ---- the round loop ------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn=None,
              start_round: int = 1) -> Result:
        """Flower's round loop with a start round (resume), per-site progress and deadlines."""
        result = Result()
        every = max(1, self.cfg.eval.every)
        if start_round == 1:
            self._evaluate(grid, 0, timeout, result)
        for rnd in range(start_round, num_rounds + 1):
            arrays = arrays_to_record(self.state.global_state)
            msgs = list(self.configure_train(rnd, arrays, ConfigRecord(dict(train_config or {})), grid))
            replies = self.exchange(grid, msgs, timeout, f"round {rnd} train")
            _, metrics = self.aggregate_train(rnd, replies)
            if metrics is not None:
                result.train_metrics_clientapp[rnd] = metrics
            if rnd % every == 0 or rnd == num_rounds:
                self._evaluate(grid, rnd, timeout, result)
        result.arrays = arrays_to_record(self.state.global_state)
        return result

    def _evaluate(self, grid: Grid, rnd: int, timeout: float, result: Result) -> None:
        msgs = list(self.configure_evaluate(rnd, ArrayRecord(), ConfigRecord(), grid))
        replies = self.exchange(grid, msgs, timeout, f"round {rnd} evaluate")
        metrics = self.aggregate_evaluate(rnd, replies)
        if metrics is not None:
            result.evaluate_metrics_clientapp[rnd] = metrics

    def _push(self, grid: Grid, messages: list[Message], phase: str) -> dict[str, Message]:
        """Push; re-push (bounded by the node wait) what the SuperLink did not store yet.

        A SuperLink silently refuses instructions for nodes it does not consider online
        (``push_messages`` then returns fewer ids), e.g. right after start-up.
        """
        deadline = time.monotonic() + self.node_wait_s
        todo = list(messages)
        sent: dict[str, Message] = {}
        while todo:
            ids = set(grid.push_messages(todo))
            for msg in todo:
                if msg.metadata.message_id in ids:
                    sent[msg.metadata.message_id] = msg
            todo = [m for m in todo if m.metadata.message_id not in ids]
            if not todo or time.monotonic() >= deadline:
                break
            log(INFO, "%s: %d instruction(s) not accepted yet; retrying", phase, len(todo))
            time.sleep(1.0)
        return sent

    def exchange(self, grid: Grid, messages: list[Message], timeout: float, phase: str) -> list[Message]:
        """Push, then pull replies as they arrive until all are in or ``timeout`` passes.

        Replies generated by the SuperLink for a dead node carry the SuperLink as sender, so
        each reply is attributed through the id of the instruction it answers.
        """
        if not messages:
            return []
        sent = self._push(grid, messages, phase)
        pending = set(sent)
        replies: list[Message] = []
        deadline = time.monotonic() + timeout
        total = len(pending)
        if self.progress:
            self.progress(phase, 0, total, "")
        while pending and time.monotonic() < deadline:
            for reply in grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                pending.discard(mid)
                node = int(sent[mid].metadata.dst_node_id)
                if reply.has_error() and int(reply.metadata.src_node_id) != node:
                    reply = Message(reply.error, reply_to=sent[mid])  # attribute to the site
                replies.append(reply)
                if self.progress:
                    site = self.state.node_site.get(node, str(node))
                    self.progress(phase, total - len(pending), total, site)
            if pending:
                time.sleep(0.2)
        if pending:
            log(WARNING, "%s: %d site(s) did not reply within %.0f s", phase, len(pending), timeout)
        for msg in messages:  # never accepted by the SuperLink: fail them explicitly
            if msg.metadata.message_id not in sent:
                site = self.state.node_site.get(int(msg.metadata.dst_node_id), "?")
                reason = f"site {site}: the SuperLink did not accept the instruction (node offline?)"
                replies.append(Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason), reply_to=msg))
        for mid in pending:
            site = self.state.node_site.get(int(sent[mid].metadata.dst_node_id), "?")
            reason = f"site {site} did not reply within the round deadline ({timeout:.0f} s)"
            replies.append(Message(Error(code=ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason=reason),
                                   reply_to=sent[mid]))
        # Arrival order and node ids are arbitrary; aggregate in site order so runs are
        # reproducible (float sums depend on the order).
        replies.sort(key=lambda m: (self.state.node_site.get(int(m.metadata.src_node_id), ""),
                                    int(m.metadata.src_node_id)))
        return replies
