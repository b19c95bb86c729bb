"""Starting or joining Ray, one way for every stage."""

from __future__ import annotations

import os
import socket

from worldmodels.errors import UserError

CONNECT_TIMEOUT_S = 5.0


def ensure_ray(address: str | None = None, workers: int = 1) -> None:
    """Start local Ray (default) or join a cluster at `address` (`auto` or HOST:PORT).

    Reuses a session that is already up, e.g. the one the test suite shares."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=True, logging_level="ERROR")
    if address:
        _check_reachable(address)
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


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT nobody listens on (ray.init would wait for minutes)."""
    if address == "auto" or "://" in address:
        return  # `auto` finds the local cluster itself; ray:// goes through Ray Client
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"bad Ray address {address!r}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"could not reach Ray at {address}: {err.strerror or err}") from None
