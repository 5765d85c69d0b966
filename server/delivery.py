"""Talking to the sites over a Flower ``Grid``: admission, waiting for the run's sites,
sampling, and pushing instructions / pulling replies with deadlines.

Transport only: what a reply means is the strategy's business. Flower's own sampling waits
forever for nodes and samples any connected node; here a run takes part only with the sites
it names, waits a bounded ``fl.node_wait`` for them, and every log line names sites (a node
id appears only for a node not identified yet). Long waits report at most every
``report_every_s`` seconds who is still missing, and a site that dies counts as failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedreid.fl.admission import Signature, admission_problems
from fedreid.report import RunRecorder

ProgressFn = Callable[[str, int, int, str], None]  # phase, done, total, last site
REPORT_EVERY_S = 10.0
REASK_REFUSED_S = 30.0  # a refused node is asked again this often while a phase waits for sites
# Why Flower answered an instruction with an error, in an operator's words.
ERROR_WORDS = {
    int(ErrorCode.NODE_UNAVAILABLE): "the site went offline (missed its heartbeats)",
    int(ErrorCode.REPLY_MESSAGE_UNAVAILABLE): "no reply before the deadline",
    int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION): "the site's app raised an exception",
    int(ErrorCode.CLIENT_APP_CRASHED): "the site's app crashed or stopped responding",
}


def parse_bound_sites(entries: Iterable[str]) -> dict[int, str]:
    """``["123=market", ...]`` (``fl.bound_sites``) → ``{123: "market"}``."""
    bound: dict[int, str] = {}
    for entry in entries:
        node, sep, site = str(entry).partition("=")
        if not sep or not node.strip().isdigit() or not site.strip():
            raise ValueError(f"fl.bound_sites entry {entry!r} is not NODE_ID=SITE; `fedreid server run` "
                             "writes these from the SuperLink's registered keys, leave the key empty otherwise")
        bound[int(node)] = site.strip()
    return bound


def describe_error(reply: Message) -> str:
    """One line for an error reply: the operator's words, then Flower's reason."""
    code = int(reply.error.code)
    words = ERROR_WORDS.get(code, f"error {code}")
    return f"{words} (error {code}: {reply.error.reason})"[:500]


class Delivery:
    """Admission, bounded waiting, seeded sampling and deadline-bound exchanges for one run.

    ``node_site`` (node id → admitted site) is passed in by the caller, which checkpoints it;
    ``bound`` maps a node to the site its registered key belongs to (empty: trust the node's
    claim, as when SuperNode authentication is off).
    """

    def __init__(self, *, run_sites: Sequence[str], min_sites: int, node_wait_s: float,
                 signature: Signature, rng: np.random.Generator, bound: Mapping[int, str] | None = None,
                 recorder: RunRecorder | None = None, progress: ProgressFn | None = None,
                 report_every_s: float = REPORT_EVERY_S, sleep: Callable[[float], None] = time.sleep):
        if node_wait_s < 0:
            raise ValueError(f"fl.node_wait={node_wait_s} must be >= 0 (seconds)")
        self.run_sites = list(run_sites)
        self.min_sites = min_sites
        self.node_wait_s = node_wait_s
        self.signature = signature
        self.rng = rng
        self.bound = dict(bound or {})
        self.recorder = recorder
        self.progress = progress
        self.report_every_s = report_every_s
        self.sleep = sleep
        # node -> why it may not take part; asked again in later phases (it may have been
        # restarted with the right settings), the reason logged again only when it changes
        self.refused: dict[int, str] = {}
        self.left_out: dict[int, str] = {}  # node -> its site, connected but not in this run

    # ---- naming ----------------------------------------------------------------------------
    def name(self, node: int, node_site: Mapping[int, str]) -> str:
        """The site a node serves, else the site its key is registered for, else the node id."""
        return node_site.get(node) or self.bound.get(node) or f"node {node}"

    # ---- waiting, admission, sampling ----------------------------------------------------------
    def sample(self, grid: Grid, fraction: float, node_site: dict[int, str], server_round: int) -> list[int]:
        """Wait (at most ``fl.node_wait``) for ``min_sites`` admitted sites, then sample a
        ``fraction`` of the admitted ones with the run's seeded generator."""
        admitted = self.wait_for_sites(grid, node_site, server_round)
        size = max(1, int(round(len(admitted) * fraction)))
        # Sample positions in site order, not node ids: node ids are random per run (and up to
        # 2**64, which numpy would turn into floats); the same seed must pick the same sites.
        admitted.sort(key=lambda n: (node_site[n], n))
        picked = self.rng.choice(len(admitted), size=size, replace=False)
        return sorted(int(admitted[i]) for i in picked)

    def wait_for_sites(self, grid: Grid, node_site: dict[int, str], server_round: int) -> list[int]:
        """Connected, admitted nodes once ``min_sites`` are there or the wait is over."""
        started = time.monotonic()
        deadline = started + self.node_wait_s
        # node -> when it was asked. A node silent to one admission query is asked again next
        # phase; a refused one every REASK_REFUSED_S (it may have been restarted, fixed, under
        # the same key and node id).
        asked: dict[int, float] = {}
        last_report = started
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            now = time.monotonic()
            fresh = [n for n in nodes if n not in asked
                     or (n in self.refused and now - asked[n] >= REASK_REFUSED_S)]
            asked.update(dict.fromkeys(fresh, now))
            self._admit(grid, fresh, set(nodes), node_site, max(1.0, deadline - time.monotonic()),
                        server_round)
            admitted = [n for n in nodes if n in node_site]
            now = time.monotonic()
            if len(admitted) >= self.min_sites or now >= deadline:
                break
            if now - last_report >= self.report_every_s:
                last_report = now
                log(INFO, "waiting for sites: %d of %d admitted; missing: %s (%.0f s of fl.node_wait=%.0f s)",
                    len(admitted), self.min_sites, self._missing(admitted, node_site), now - started,
                    self.node_wait_s)
            self.sleep(1.0)
        if not admitted:
            refused = "; ".join(f"{self.name(n, node_site)}: {why}" for n, why in self.refused.items())
            raise RuntimeError(
                f"no site of this run ({', '.join(self.run_sites)}) was admitted within "
                f"fl.node_wait={self.node_wait_s:.0f} s" + (f" (refused: {refused})" if refused else "")
                + ". Start the sites (`fedreid site join`), or raise fl.node_wait"
            )
        if len(admitted) < self.min_sites:
            log(WARNING, "going on with %d of %d sites after fl.node_wait=%.0f s; missing: %s",
                len(admitted), self.min_sites, self.node_wait_s, self._missing(admitted, node_site))
        return admitted

    def _missing(self, admitted: list[int], node_site: Mapping[int, str]) -> str:
        missing = sorted(set(self.run_sites) - {node_site[n] for n in admitted})
        return ", ".join(missing) or "none (fl.min_sites counts more sites than data.sites names)"

    def _admit(self, grid: Grid, nodes: list[int], connected: set[int], node_site: dict[int, str],
               timeout: float, server_round: int) -> None:
        """Admit new nodes: a node whose key is bound to a site outside this run is left alone
        without a message; the others are asked which site they are and what they would send."""
        ask = []
        for node in nodes:
            if node in node_site or node in self.left_out:
                continue
            if not self.bound:
                ask.append(node)
            elif node not in self.bound:
                self._refuse(node, f"node {node}", "?", "its key is not registered for a site; register it "
                             "on the coordinator: `fedreid keys register <site>.pub`", server_round)
            elif self.bound[node] not in self.run_sites:
                self._leave_out(node, self.bound[node], server_round)
            else:
                ask.append(node)
        if not ask:
            return
        msgs = [Message(content=RecordDict({"config": ConfigRecord({})}), message_type=MessageType.QUERY,
                        dst_node_id=n) for n in ask]
        for reply in self.exchange(grid, msgs, timeout, "admission", node_site):
            if not reply.has_error():  # a node that failed to answer is asked again next phase
                self._admit_reply(int(reply.metadata.src_node_id), reply, connected, node_site, server_round)

    def _admit_reply(self, node: int, reply: Message, connected: set[int], node_site: dict[int, str],
                     server_round: int) -> None:
        meta = reply.content.config_records.get("meta", {})
        site, method = str(meta.get("site", f"node {node}")), str(meta.get("method", "?"))
        bound = self.bound.get(node)
        if bound is not None and site != bound:
            self._refuse(node, bound, method, f"its key is registered for site {bound!r} but it claims to "
                         f"be {site!r} (its --site); start it with --site {bound}, or register its own key",
                         server_round)
            return
        if site not in self.run_sites:
            self._leave_out(node, site, server_round)
            return
        try:
            signature = {k: (tuple(v[0]), str(v[1])) for k, v in json.loads(str(meta["signature"])).items()}
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            problems = [f"unreadable admission reply ({exc})"]
        else:
            problems = admission_problems(site, method, str(meta.get("arch", "?")), signature,
                                          self.signature, self.run_sites)
        earlier = [n for n, s in node_site.items() if s == site and n != node]
        taken = [n for n in earlier if n in connected]
        if not problems and taken:
            problems = [f"site {site!r} already takes part as node {taken[0]}"]
        if problems:
            self._refuse(node, site, method, "; ".join(problems), server_round)
        else:
            for gone in earlier:  # the site came back under a new node id (a new key)
                del node_site[gone]
            self.refused.pop(node, None)
            node_site[node] = site
            log(INFO, "site %s admitted (method %s)", site, method)

    def _refuse(self, node: int, site: str, method: str, why: str, server_round: int) -> None:
        if self.refused.get(node) == why:
            return
        self.refused[node] = why
        log(WARNING, "site %s (node %s) refused: %s", site, node, why)
        if self.recorder:
            self.recorder.log("admission", server_round, site=site, node=node, method=method, refused=why)

    def _leave_out(self, node: int, site: str, server_round: int) -> None:
        self.left_out[node] = site
        why = f"not part of this run (data.sites = {', '.join(self.run_sites)})"
        log(INFO, "site %s (node %s) is connected but %s: left alone", site, node, why)
        if self.recorder:
            self.recorder.log("admission", server_round, site=site, node=node, refused=why)

    # ---- exchanging messages ---------------------------------------------------------------
    def push(self, grid: Grid, messages: list[Message], phase: str,
             node_site: Mapping[int, str]) -> dict[str, Message]:
        """Push; re-push (within ``fl.node_wait``) what the SuperLink did not accept yet.

        A SuperLink silently refuses instructions for nodes it does not consider online
        (``push_messages`` then returns fewer ids), e.g. right after start-up.
        """
        started = time.monotonic()
        last_report = started
        todo = list(messages)
        sent: dict[str, Message] = {}
        while todo:
            ids = set(grid.push_messages(todo))
            sent.update({m.metadata.message_id: m for m in todo if m.metadata.message_id in ids})
            todo = [m for m in todo if m.metadata.message_id not in ids]
            now = time.monotonic()
            if not todo or now - started >= self.node_wait_s:
                break
            if now - last_report >= self.report_every_s:
                last_report = now
                log(INFO, "%s: instructions for %s not accepted by the SuperLink yet (offline?); retrying",
                    phase, ", ".join(self.name(int(m.metadata.dst_node_id), node_site) for m in todo))
            self.sleep(1.0)
        return sent

    def exchange(self, grid: Grid, messages: list[Message], timeout: float, phase: str,
                 node_site: Mapping[int, str]) -> Iterator[Message]:
        """Push, then yield replies as they arrive until all are in or ``timeout`` passes.

        Every instruction gets exactly one reply: a site's own, or an error reply made here
        for an instruction the SuperLink never accepted or that timed out. Replies generated by
        the SuperLink for a dead node carry the SuperLink as sender, so each reply is
        attributed through the instruction it answers. Replies are yielded in site order
        (float sums depend on the order; runs must be reproducible), each as soon as every
        site before it is settled: the caller folds a reply and drops it while later ones are
        still on the way, and holds only those that overtook a slower site.
        """
        if not messages:
            return
        started = time.monotonic()
        sent = self.push(grid, messages, phase, node_site)

        def rank(i: int) -> tuple[str, int]:
            node = int(messages[i].metadata.dst_node_id)
            return self.name(node, node_site), node

        # Instructions by position: one the SuperLink did not accept has no message id.
        order = sorted(range(len(messages)), key=rank)
        position = {id(m): i for i, m in enumerate(messages)}
        settled: dict[int, Message] = {}  # position → its reply, until its turn comes
        failed: list[str] = []
        total, arrived, turn = len(messages), 0, 0
        if self.progress:
            self.progress(phase, 0, total, "")
        accepted = {id(m) for m in sent.values()}
        for i, msg in enumerate(messages):  # never accepted by the SuperLink: fail them explicitly
            if id(msg) not in accepted:
                reason = "the SuperLink did not accept the instruction (site offline?)"
                settled[i] = self._failure(msg, ErrorCode.NODE_UNAVAILABLE, reason, phase, node_site, failed)
        pending = set(sent)

        def collect() -> None:
            nonlocal arrived
            for reply in grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid not in pending:
                    continue
                pending.discard(mid)
                node = int(sent[mid].metadata.dst_node_id)
                if reply.has_error() and int(reply.metadata.src_node_id) != node:
                    reply = Message(reply.error, reply_to=sent[mid])  # attribute it to the site
                settled[position[id(sent[mid])]] = reply
                arrived += 1
                self._log_reply(phase, node, reply, node_site, failed, arrived, total, started)

        def due() -> Iterator[Message]:
            nonlocal turn
            while turn < total and order[turn] in settled:
                yield settled.pop(order[turn])
                turn += 1

        pushed = last_report = time.monotonic()  # the deadline runs from the push
        while pending and time.monotonic() - pushed < timeout:
            collect()
            yield from due()
            now = time.monotonic()
            if pending and now - last_report >= self.report_every_s:
                last_report = now
                waiting = ", ".join(sorted(self.name(int(sent[m].metadata.dst_node_id), node_site) for m in pending))
                log(INFO, "%s: waiting for %s (%d of %d in, %.0f s of %.0f s)", phase, waiting,
                    arrived, total, now - pushed, timeout)
            if pending:
                self.sleep(0.2)
        if pending:
            # One pull can outlast the deadline (the SuperLink holds it while a reply's upload is
            # incomplete): replies that arrived meanwhile count, only the missing ones fail.
            collect()
        for mid in sorted(pending):
            reason = f"no reply within the deadline ({timeout:.0f} s)"
            settled[position[id(sent[mid])]] = self._failure(sent[mid], ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
                                                             reason, phase, node_site, failed)
        yield from due()
        if phase != "admission":
            log(INFO, "%s: %d of %d site(s) replied%s in %.0f s", phase, total - len(failed), total,
                f", {len(failed)} failed ({', '.join(sorted(failed))})" if failed else "",
                time.monotonic() - started)

    def _failure(self, msg: Message, code: int, reason: str, phase: str, node_site: Mapping[int, str],
                 failed: list[str]) -> Message:
        site = self.name(int(msg.metadata.dst_node_id), node_site)
        failed.append(site)
        log(WARNING, "%s: %s failed: %s", phase, site, reason)
        return Message(Error(code=int(code), reason=f"site {site}: {reason}"), reply_to=msg)

    def _log_reply(self, phase: str, node: int, reply: Message, node_site: Mapping[int, str],
                   failed: list[str], done: int, total: int, started: float) -> None:
        site = self.name(node, node_site)
        elapsed = time.monotonic() - started
        if reply.has_error():
            failed.append(site)
            log(WARNING, "%s: %s failed after %.0f s: %s (%d of %d in, %d failed)", phase, site, elapsed,
                describe_error(reply), done, total, len(failed))
        else:
            log(INFO, "%s: %s replied after %.0f s (%d of %d in%s)", phase, site, elapsed, done, total,
                f", {len(failed)} failed" if failed else "")
            meta = reply.content.config_records.get("meta", {})
            if "warnings" in meta:
                for line in str(meta["warnings"]).splitlines():
                    log(WARNING, "site %s: %s", site, line)
        if self.progress:
            self.progress(phase, done, total, site)
