"""`fedreid sim` hides exactly the two framework notices a user cannot act on, nothing else."""

import logging
import warnings

from flwr.supercore.logger import warn_deprecated_feature

from sims.runner import _DropRunSimulationDeprecation, quiet_framework_notices


def test_run_simulation_deprecation_and_ray_tip_are_dropped_other_notices_kept(caplog):
    flwr_logger = logging.getLogger("flwr")
    caplog.set_level(logging.WARNING, logger="flwr")
    flwr_logger.addHandler(caplog.handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_framework_notices():
                warn_deprecated_feature("The `run_simulation` function is deprecated and will be removed")
                warn_deprecated_feature("The `other_api` function is deprecated")
                flwr_logger.info("round 1 started")
                warnings.warn("Tip: In future versions of Ray, Ray will no longer override", FutureWarning, stacklevel=1)
                warnings.warn("a different future change", FutureWarning, stacklevel=1)
    finally:
        flwr_logger.removeHandler(caplog.handler)
    text = caplog.text
    assert "run_simulation" not in text
    assert "other_api" in text
    assert "round 1 started" not in text  # INFO lowered to WARNING while the simulation runs
    assert [str(w.message) for w in caught] == ["a different future change"]
    assert not any(isinstance(f, _DropRunSimulationDeprecation) for f in flwr_logger.filters)  # removed after


def test_a_simulated_sites_actor_drops_only_rays_shutdown_notice(caplog):
    from flwr.common.logger import log

    import clients.runtime  # noqa: F401  (what every Ray actor imports; it installs the filter)

    flwr_logger = logging.getLogger("flwr")
    caplog.set_level(logging.WARNING, logger="flwr")
    flwr_logger.addHandler(caplog.handler)
    try:
        log(logging.WARNING, "Manually terminating %s", "ClientAppActor")
        log(logging.WARNING, "site %s: round %d failed", "market", 3)
    finally:
        flwr_logger.removeHandler(caplog.handler)
    assert "Manually terminating" not in caplog.text
    assert "site market: round 3 failed" in caplog.text
