"""The coordinator's side of ``codec.download=difference-int8``: which view each site holds,
and each site's download record (:mod:`fedreid.fl.view` has the view and its wire format)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fedreid.fl.codec import PackedMask
from fedreid.fl.view import HELD_KEY, SharedView, fresh_token, initial_token, masks_digest
from wire.records import record_of, to_array


class ViewDownloads:
    """The view, the token each site holds and the token each node was last sent.

    A site holds what a message carried once a reply to it came back (accepted or not: the
    site applied the download before training); an error reply forgets what it holds, so its
    next download is the whole view.
    """

    def __init__(self, global_state: Mapping[str, np.ndarray], *, last_round: int,
                 initial_digest: str | None) -> None:
        """``initial_digest``: the run's initial model when ``global_state`` is it (a fresh
        run whose sites rebuild it from the seed); None starts a view no site holds."""
        token = initial_token(initial_digest) if initial_digest is not None else fresh_token()
        self.view = SharedView(global_state, token)
        self._round = last_round  # the round whose global the view mirrors
        self._held: dict[str, int] = {}  # site -> token
        self._sent: dict[int, int] = {}  # node -> token of its last message

    def advance(self, server_round: int, global_state: Mapping[str, np.ndarray]) -> None:
        """Take one step to the global of ``server_round``, once per new global."""
        if server_round != self._round:
            self.view.advance(global_state)
            self._round = server_round

    def record(self, node: int, site: str | None, held_masks: Mapping[str, PackedMask],
               value_dtype: str, common: dict[str, Array]) -> ArrayRecord:
        """What ``site`` lacks of the view, and the digest of its masks held here. Arrays
        alike for every site (the step, the whole view) are built once per round (``common``)."""
        arrays = self.view.download(self._held.get(site) if site else None, value_dtype)
        self._sent[node] = self.view.token
        for value in arrays.values():
            if str(id(value)) not in common:
                common[str(id(value))] = to_array(value)
        record = {k: common[str(id(v))] for k, v in arrays.items()}
        if held_masks:
            digest = masks_digest({k: m.digest for k, m in held_masks.items()})
            record[HELD_KEY] = to_array(np.frombuffer(digest, dtype=np.uint8).copy())
        return record_of(record)

    def whole(self, nodes: Iterable[int], value_dtype: str) -> dict[str, np.ndarray]:
        """The whole view, for ``nodes`` that could not take a step."""
        self._sent.update(dict.fromkeys(nodes, self.view.token))
        return self.view.whole(value_dtype)

    def seeded(self, nodes: Iterable[int]) -> None:
        """``nodes`` are sent the seeded start: they will hold the initial view."""
        self._sent.update(dict.fromkeys(nodes, self.view.token))

    def delivered(self, node: int, site: str | None) -> None:
        """A reply came back from ``node``: its site holds the view the message carried."""
        if site is not None and node in self._sent:
            self._held[site] = self._sent[node]

    def forget(self, site: str) -> None:
        """``site`` may hold no view (an error reply, a new node id)."""
        self._held.pop(site, None)
