"""FedKLPR and its baselines as one Flower strategy (Message API, subclass of ``FedAvg``).

Flower's ``FedAvg`` averages one dense ArrayRecord per reply, holding every reply at once.
This strategy keeps Flower's hooks (configure/aggregate × train/evaluate, ``summary``) and:

- sends each site its personalised model (global ⊙ that site's mask) without a bitmap (the
  site holds its mask; the mask's digest rides along), in ``codec.value_dtype``; in round
  one, a digest of the initial model instead of the model (``codec.seeded_start``);
- validates every reply (:func:`fedreid.fl.validate.check_reply`) and folds it into the flat
  aggregator (:class:`fedreid.fl.flat_sas.FlatSas`: KLPWA / sample / CDW weights, SAS, DP
  noise) as soon as it is read, so a reply is dropped once folded; a rejected reply, an
  error or a site back under a new node id makes the coordinator forget that site's masks,
  so its next download is dense and its next reply carries full bitmaps;
- counts the bytes of every array it sends and receives, training and evaluation apart;
- accounts DP with ``dp_accounting`` (:class:`fedreid.fl.privacy_ledger.PrivacyLedger`).

Transport (admission, sampling, deadlines) is :class:`server.delivery.Delivery`; the maths
is :mod:`fedreid.fl`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from fedreid.config.schema import FedReIDConfig
from fedreid.fl.accounting import serialized_nbytes
from fedreid.fl.admission import signature_of
from fedreid.fl.codec import INITIAL_MISMATCH, encode_dense, encode_initial, state_digest
from fedreid.fl.dp import GaussianNoise
from fedreid.fl.flat_sas import FlatSas
from fedreid.fl.privacy_ledger import PrivacyLedger
from fedreid.fl.validate import check_reply
from fedreid.fl.view import VIEW_MISMATCH
from fedreid.fl.weight_rules import weight_rule
from fedreid.report import RunRecorder
from server.delivery import Delivery, ProgressFn, parse_bound_sites
from server.view_downloads import ViewDownloads
from wire.records import (
    arrays_to_record,
    record_nbytes,
    record_of,
    record_views,
    to_array,
)

SHARED_PARTS = ("::dense", "::shape")  # the same in every site's download of a round


@dataclass
class StrategyState:
    """Everything the server must remember between rounds (checkpointed)."""

    global_state: dict[str, np.ndarray]
    site_masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    node_site: dict[int, str] = field(default_factory=dict)
    last_round: int = 0
    dp_rates: list[float] = field(default_factory=list)  # per noisy round: sampled / admitted


@dataclass
class _Phase:
    """Bytes of one exchange: what was sent and received, and its dense-fp32 equivalent."""

    down: int = 0
    up: int = 0
    dense: int = 0
    sent: int = 0


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


def _meta(msg: Message) -> tuple[str | None, str]:
    meta = msg.content.config_records.get("meta")
    site = str(meta["site"]) if meta and "site" in meta else None
    return site, str(meta["method"]) if meta and "method" in meta else "?"


def _arrays_nbytes(msg: Message) -> int:
    return record_nbytes(msg.content["arrays"]) if "arrays" in msg.content.array_records else 0


class FedReIDStrategy(FedAvg):
    """One strategy class; ``cfg.fl.strategy`` presets select FedKLPR or a baseline."""

    def __init__(self, cfg: FedReIDConfig, initial_state: dict[str, np.ndarray], *,
                 num_sites: int, recorder: RunRecorder | None = None,
                 on_round_end: Callable[[int, StrategyState], None] | None = None,
                 progress: ProgressFn | None = None, node_wait_s: float | None = None):
        min_sites = cfg.fl.min_sites or num_sites
        super().__init__(fraction_train=cfg.fl.fraction_train, fraction_evaluate=1.0,
                         min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=min_sites)
        self.cfg = cfg
        self.num_sites = num_sites
        self.min_sites = min_sites
        self.shapes = {k: tuple(v.shape) for k, v in initial_state.items()}
        self.dtypes = {k: v.dtype for k, v in initial_state.items()}
        # What one dense copy of the model costs on the wire; fixed by shapes and dtypes.
        self.dense_nbytes = serialized_nbytes(initial_state)
        self.recorder = recorder
        self.on_round_end = on_round_end
        self.rng = np.random.default_rng(cfg.seed)
        a, dp = cfg.agg, cfg.dp
        self.rule = weight_rule(a.weighting, a.klaw_sign, a.praw_form, a.combine, a.beta)
        self.noise = GaussianNoise(dp.noise_multiplier, dp.clipping_norm, self.rng) if dp.enabled else None
        self.initial_digest = state_digest(initial_state) if cfg.codec.seeded_start else None
        self.delivery = Delivery(
            run_sites=cfg.data.sites, min_sites=min_sites,
            node_wait_s=cfg.fl.node_wait if node_wait_s is None else node_wait_s,
            signature=signature_of(initial_state), rng=self.rng,
            bound=parse_bound_sites(cfg.fl.bound_sites), recorder=recorder, progress=progress)
        self.state = StrategyState(global_state={k: np.array(v) for k, v in initial_state.items()})
        self._train = _Phase()
        self._eval_bytes: dict[str, int] = {}
        self._site_node: dict[str, int] = {}  # the node each site was last sent a download on

    # ---- state ---------------------------------------------------------------------------
    @property
    def state(self) -> StrategyState:
        """The checkpointed state; the global model and masks are kept current in it."""
        return self._state

    @state.setter
    def state(self, value: StrategyState) -> None:
        """Adopt a state (a new run, or a resumed checkpoint): the aggregator starts from its
        global model and masks, the privacy ledger from its rounds."""
        self._state = value
        # Plain float32 downloads can be written while the new global is built (FlatSas).
        values = self.cfg.codec.download == "values"
        self.flat = FlatSas(value.global_state, self.rule, mask_aware=self.cfg.agg.sas, noise=self.noise,
                            download_dtype=self.cfg.codec.value_dtype if values else None)
        for site, masks in value.site_masks.items():
            self.flat.set_site_masks(site, masks)
        dp = self.cfg.dp
        self.ledger = PrivacyLedger(dp.noise_multiplier, dp.accountant, value.dp_rates) if dp.enabled else None
        self.views = None
        if self.cfg.codec.download == "difference-int8":
            # a fresh run's view is the initial model the sites rebuild; a resumed one is new to all
            self.views = ViewDownloads(value.global_state, last_round=value.last_round,
                                       initial_digest=self.initial_digest if self._at_initial_model() else None)

    def _sync_state(self, server_round: int) -> None:
        s = self._state
        s.last_round = server_round
        s.global_state = self.flat.global_state()
        if self.on_round_end is not None:  # unpacked masks only for a checkpoint
            s.site_masks = {site: masks for site in self.flat.store.sites()
                            if (masks := self.flat.site_masks(site))}
        if self.ledger is not None:
            s.dp_rates = list(self.ledger.rates)

    def summary(self) -> None:
        """Log the settings that decide what a round sends and how it aggregates."""
        c, a = self.cfg, self.cfg.agg
        log(INFO, "\t├──> %s: %d site(s), fraction_train %.2f, min_sites %d", c.fl.strategy,
            self.num_sites, c.fl.fraction_train, self.min_sites)
        log(INFO, "\t├──> weighting %s (%s, %s, %s, beta %.2f), SAS %s", a.weighting, a.klaw_sign,
            a.praw_form, a.combine, a.beta, a.sas)
        log(INFO, "\t├──> values %s, seeded start %s, dense model %d bytes", c.codec.value_dtype,
            c.codec.seeded_start, self.dense_nbytes)
        log(INFO, "\t└──> DP %s", f"z={c.dp.noise_multiplier}, C={c.dp.clipping_norm}, "
            f"{c.dp.accountant}" if c.dp.enabled else "off")

    def _sample(self, grid: Grid, fraction: float) -> list[int]:
        return self.delivery.sample(grid, fraction, self.state.node_site, self.state.last_round)

    def _at_initial_model(self) -> bool:
        """A fresh run whose global is still the initial model the sites can rebuild."""
        return (self.initial_digest is not None and self.state.last_round == 0
                and state_digest(self.state.global_state) == self.initial_digest)

    def _seeded(self, server_round: int) -> bool:
        """Round one of a fresh run whose global is still the initial model."""
        return server_round <= 1 and self._at_initial_model()

    def _view_record(self, node: int, site: str | None, common: dict[str, Array]) -> ArrayRecord:
        """``site``'s view download, with the digest of its masks held here."""
        return self.views.record(node, site, self.flat.known_masks(site) if site else {},
                                 self.cfg.codec.value_dtype, common)

    def _resync(self, node: int, site: str | None) -> None:
        """A site back under another node id (restarted, new key) may have lost its state:
        forget its masks so its download is dense and its reply carries full bitmaps."""
        if site is None:
            return
        if self._site_node.get(site, node) != node:
            log(INFO, "site %s is back as node %s: its masks are sent again", site, node)
            self.flat.forget(site)
            if self.views is not None:
                self.views.forget(site)
        self._site_node[site] = node

    # ---- train ---------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config["server-round"] = server_round
        self._train = _Phase()
        seeded = arrays_to_record(encode_initial(self.initial_digest)) if self._seeded(server_round) else None
        nodes = self._sample(grid, self.cfg.fl.fraction_train)
        common: dict[str, Array] = {}
        if self.views is not None:
            self.views.advance(self.state.last_round, self.state.global_state)
        return [self._train_message(node, config, seeded, common) for node in nodes]

    def _train_message(self, node: int, config: ConfigRecord, record: ArrayRecord | None,
                       common: dict[str, Array]) -> Message:
        """``common``: the round's Arrays every download has alike (dense tensors, shapes),
        built once and shared by the records."""
        site = self.state.node_site.get(node)
        self._resync(node, site)
        if record is None and self.views is not None:
            record = self._view_record(node, site, common)
        elif record is None:
            arrays = self.flat.download_for(site or f"node-{node}", self.cfg.codec.value_dtype)
            for key in arrays.keys() - common.keys():
                if key.endswith(SHARED_PARTS):
                    common[key] = to_array(arrays[key])
            # The same Array objects in every record: Flower caches an Array's chunks and
            # content id on the object, so sending them once per round hashes them once.
            record = record_of({k: common[k] if k.endswith(SHARED_PARTS) else to_array(v)
                                for k, v in arrays.items()})
        elif self.views is not None:  # the seeded start: the site's view is the initial model
            self.views.seeded([node])
        self._train.down += record_nbytes(record)
        self._train.dense += self.dense_nbytes
        self._train.sent += 1
        content = RecordDict({"arrays": record, "config": ConfigRecord(dict(config))})
        return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook: :meth:`aggregate_round`, then the new global as an ArrayRecord."""
        metrics = self.aggregate_round(server_round, replies)
        return (None, None) if metrics is None else (arrays_to_record(self.state.global_state), metrics)

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Validate and fold each reply as it comes (it can be dropped right after); then
        the new global model, DP noise included, in ``state.global_state`` (None when no
        reply was acceptable). The round loop calls this rather than ``aggregate_train``:
        downloads are taken from the aggregator, so a record of the whole global each round
        (a copy of the model) would go unused."""
        sites: dict[str, dict[str, Any]] = {}
        failures: list[dict] = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            admitted = self.state.node_site.get(node)
            name = admitted or f"node-{node}"
            if msg.has_error():
                reason = f"error {msg.error.code}: {msg.error.reason}"[:500]
                failures.append({"site": name, "node": node, "reason": reason})
                self.flat.forget(name)
                if self.views is not None:
                    self.views.forget(name)
                continue
            if self.views is not None:  # the site applied its download before training
                self.views.delivered(node, admitted or _meta(msg)[0])
            nbytes = _arrays_nbytes(msg)
            self._train.up += nbytes
            self._train.dense += self.dense_nbytes
            try:
                site, method, metrics = self._fold(msg, admitted)
            except ValueError as exc:  # ReplyRejected, MaskMismatch and malformed replies
                failures.append({"site": name, "node": node, "reason": str(exc)[:500]})
                self.flat.forget(name)
                continue
            sites[site] = {**metrics, "method": method, "bytes_up": nbytes}
        for f in failures:
            log(WARNING, "rejected reply from site %s (node %s): %s", f["site"], f["node"], f["reason"])
        record: dict[str, Any] = {"failures": failures, "bytes_down": self._train.down,
                                  "bytes_up": self._train.up, "dense_bytes": self._train.dense}
        if not sites:
            log(WARNING, "round %d: no acceptable reply; the global model is unchanged", server_round)
            self._finish_round(server_round, record, sites)
            return None
        self.flat.result()
        for site, w in self.flat.summary.weights.items():
            sites[site]["weight"] = w
        if self.noise is not None:
            record.update(self._account_dp(server_round))
        self._finish_round(server_round, record, sites)
        return MetricRecord({"mean_prune_ratio": record["mean_prune_ratio"], "sites": len(sites)})

    def _fold(self, msg: Message, admitted: str | None) -> tuple[str, str, dict[str, float]]:
        content = msg.content
        if "arrays" not in content.array_records or "metrics" not in content.metric_records:
            raise ValueError("reply lacks the 'arrays' ArrayRecord or the 'metrics' MetricRecord")
        claimed, method = _meta(msg)
        site = claimed or admitted or f"node-{msg.metadata.src_node_id}"
        if admitted is not None and site != admitted:
            raise ValueError(f"reply claims site {site!r}, admitted as {admitted!r}")
        limit = self.cfg.agg.max_update_norm
        checked = check_reply(
            record_views(content["arrays"]), dict(content["metrics"]), shapes=self.shapes,
            dtypes=self.dtypes, known_masks=self.flat.known_masks(site), max_update_norm=limit,
            global_state=self.flat.global_state() if limit > 0 else None)
        self.flat.fold(site, checked, checked.metrics)
        return site, method, checked.metrics

    def _account_dp(self, server_round: int) -> dict[str, float]:
        dp = self.cfg.dp
        # Amplification only where the round sampled: with fraction_train = 1 every admitted
        # site was asked, and a site that dropped out must not count as unsampled.
        if self.cfg.fl.fraction_train < 1:
            population = max(len(set(self.state.node_site.values())), self._train.sent, 1)
            self.ledger.record_round(max(1, self._train.sent), population)
        else:
            self.ledger.record_round(1, 1)
        epsilon = self.ledger.epsilon(dp.delta)
        top = self.flat.summary.noise_std_max or 0.0
        log(INFO, "round %d: DP noise added (largest std %.4g); ε = %.3g at δ = %g after %d rounds (%s)",
            server_round, top, epsilon, dp.delta, len(self.ledger.rates), dp.accountant)
        return {"dp_noise_std_max": top, "dp_epsilon": epsilon,
                "dp_sampling_rate": self.ledger.rates[-1]}

    def _finish_round(self, server_round: int, record: dict, sites: dict[str, dict[str, Any]]) -> None:
        ratios = [m["prune_ratio"] for m in sites.values()]
        record.update({
            "sites": sites,
            "mean_prune_ratio": float(np.mean(ratios)) if ratios else 0.0,
            "mean_loss": float(np.mean([m.get("loss", np.nan) for m in sites.values()])) if sites else float("nan"),
        })
        self._sync_state(server_round)
        if self.recorder:
            self.recorder.log("train", server_round, **record)
        if self.on_round_end:
            self.on_round_end(server_round, self.state)

    # ---- evaluate ------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """The global model itself is evaluated (and each site's personalised one from it),
        so it goes out whole: in ``codec.value_dtype``, as the initial model's digest, or as
        what each site lacks of the view (then the next round's download is free)."""
        config["server-round"] = server_round
        nodes = self._sample(grid, 1.0)
        records: dict[int, ArrayRecord] = {}
        if self._seeded(server_round):
            records = dict.fromkeys(nodes, arrays_to_record(encode_initial(self.initial_digest)))
            if self.views is not None:
                self.views.seeded(nodes)
        elif self.views is None:
            records = dict.fromkeys(nodes, arrays_to_record(
                encode_dense(self.state.global_state, self.cfg.codec.value_dtype)))
        else:
            self.views.advance(self.state.last_round, self.state.global_state)
            common: dict[str, Array] = {}
            records = {n: self._view_record(n, self.state.node_site.get(n), common) for n in nodes}
        return [Message(content=RecordDict({"arrays": records[n], "config": ConfigRecord(dict(config))}),
                        message_type=MessageType.EVALUATE, dst_node_id=n) for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        sites: dict[str, dict[str, float]] = {}
        failures = []
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                failures.append({"node": node, "reason": f"error {msg.error.code}: {msg.error.reason}"[:500]})
                if self.views is not None and node in self.state.node_site:
                    self.views.forget(self.state.node_site[node])
                continue
            site = _meta(msg)[0] or f"node-{node}"
            self.state.node_site.setdefault(node, site)
            if self.views is not None:
                self.views.delivered(node, site)
            sites[site] = {k: float(v) for k, v in msg.content["metrics"].items()
                           if isinstance(v, (int, float))}
        means = site_means(sites)
        for f in failures:
            log(WARNING, "evaluation failed at node %s: %s", f["node"], f["reason"])
        if self.recorder:
            self.recorder.log("evaluate", server_round, sites=sites, failures=failures, **means,
                              **self._eval_bytes)
        return MetricRecord(means) if sites else None

    # ---- the round loop ------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn=None,
              start_round: int = 1) -> Result:
        """Flower's round loop with a start round (resume), per-site progress and deadlines."""
        self.summary()
        result = Result()
        every = max(1, self.cfg.eval.every)
        arrays = ArrayRecord()  # configure_train builds each site's own download
        if start_round == 1:
            self._evaluate(grid, 0, timeout, result)
        for rnd in range(start_round, num_rounds + 1):
            msgs = list(self.configure_train(rnd, arrays, ConfigRecord(dict(train_config or {})), grid))
            replies = self._exchange(grid, msgs, timeout, f"round {rnd} train", self._train)
            metrics = self.aggregate_round(rnd, replies)
            if metrics is not None:
                result.train_metrics_clientapp[rnd] = metrics
            if rnd % every == 0 or rnd == num_rounds:
                self._evaluate(grid, rnd, timeout, result)
        result.arrays = arrays_to_record(self.state.global_state)
        return result

    def _exchange(self, grid: Grid, msgs: list[Message], timeout: float, phase: str,
                  ledger: _Phase) -> Iterator[Message]:
        """Exchange, yielding replies as they arrive (in site order); sites that could not
        rebuild the seeded initial model get it sent, and their replies come last."""
        retry: set[int] = set()
        for reply in self.delivery.exchange(grid, msgs, timeout, phase, self.state.node_site):
            if reply.has_error() and any(m in str(reply.error.reason) for m in (INITIAL_MISMATCH, VIEW_MISMATCH)):
                retry.add(int(reply.metadata.src_node_id))
            else:
                yield reply
        if not retry:
            return
        log(INFO, "%s: %d site(s) hold another model than their download assumed; sending it whole",
            phase, len(retry))
        if self.views is not None:
            record = arrays_to_record(self.views.whole(retry, self.cfg.codec.value_dtype))
        else:
            record = arrays_to_record(encode_dense(self.state.global_state))
        again = []
        for msg in msgs:
            if int(msg.metadata.dst_node_id) in retry:
                config = ConfigRecord(dict(msg.content["config"]))
                again.append(Message(RecordDict({"arrays": record, "config": config}),
                                     message_type=msg.metadata.message_type,
                                     dst_node_id=msg.metadata.dst_node_id))
                ledger.down += record_nbytes(record)
                ledger.dense += self.dense_nbytes
        yield from self.delivery.exchange(grid, again, timeout, phase, self.state.node_site)

    def _evaluate(self, grid: Grid, rnd: int, timeout: float, result: Result) -> None:
        msgs = list(self.configure_evaluate(rnd, ArrayRecord(), ConfigRecord(), grid))
        phase = _Phase(down=sum(record_nbytes(m.content["arrays"]) for m in msgs),
                       dense=len(msgs) * self.dense_nbytes, sent=len(msgs))
        replies = list(self._exchange(grid, msgs, timeout, f"round {rnd} evaluate", phase))
        phase.up = sum(_arrays_nbytes(r) for r in replies if not r.has_error())
        self._eval_bytes = {"bytes_down": phase.down, "bytes_up": phase.up, "dense_bytes": phase.dense}
        metrics = self.aggregate_evaluate(rnd, replies)
        if metrics is not None:
            result.evaluate_metrics_clientapp[rnd] = metrics
