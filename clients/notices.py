"""Drop the one Flower notice a simulated site prints that nobody can act on.

Every Ray actor that hosted simulated sites logs ``Manually terminating ClientAppActor`` at
WARNING when a simulation ends: routine shutdown, printed once per actor through Ray into
the user's terminal. The filter sits on the ``flwr`` logger of the process that imports the
site runtime, which is every actor (the ClientApp's handlers live in :mod:`clients.runtime`).
"""

from __future__ import annotations

import logging

SHUTDOWN_NOTICE = "Manually terminating %s"


class DropActorShutdownNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != SHUTDOWN_NOTICE


def install() -> None:
    """Add the filter to Flower's logger once per process."""
    logger = logging.getLogger("flwr")
    if not any(isinstance(f, DropActorShutdownNotice) for f in logger.filters):
        logger.addFilter(DropActorShutdownNotice())
