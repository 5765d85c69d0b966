"""``flower-superlink`` with a patient database: ``python -m server.superlink [its flags]``.

The SuperLink keeps sites, runs and messages in SQLite and gives a write 5 s to get the lock
(Flower's ``busy_timeout``); past that the request fails with 500 "database is locked". On a
loaded coordinator — several sites uploading model updates while the ServerApp pulls them —
5 s is not enough: a site's reply is lost, or the ServerApp's own pull fails and the run
ends. ``fedreid server start`` runs the SuperLink through this module, which raises the wait
to ``BUSY_TIMEOUT_MS`` and changes nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

BUSY_TIMEOUT_MS = 120_000


def patient(pragmas: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Flower's SQLite pragmas with ``busy_timeout`` raised to ``BUSY_TIMEOUT_MS``."""
    return tuple((name, str(BUSY_TIMEOUT_MS)) if name == "busy_timeout" else (name, value)
                 for name, value in pragmas)


def main() -> None:
    from flwr.supercore import sql_mixin
    from flwr.superlink.cli import flower_superlink

    sql_mixin.SQLITE_PRAGMAS = patient(sql_mixin.SQLITE_PRAGMAS)
    sys.argv[0] = "flower-superlink"
    sys.exit(flower_superlink())


if __name__ == "__main__":
    main()
