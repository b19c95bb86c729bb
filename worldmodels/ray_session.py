"""Starting or joining Ray, one way for every stage."""

from __future__ import annotations

import os

from worldmodels.errors import UserError


def ensure_ray(address: str | None = None, workers: int = 1) -> None:
    """Start local Ray (default) or join a cluster at `address` (`auto` or HOST:PORT).

    Reuses a session that is already up, e.g. the one the test suite shares."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=True, logging_level="ERROR")
    try:
        if address:
            # Attaching: the cluster already knows its resources, so num_cpus is not passed.
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"at {address}" if address else "locally"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not start or reach Ray {where}: {first_line}") from None
