"""Starting or joining Ray, one way for every stage, and the one pool of Ray actors."""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worldmodels.errors import UserError, warn

CONNECT_TIMEOUT_S = 5.0
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_FRAME_TYPE = 0x04
GCS_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # cheap, answered by every head


def warn_if_address_ignored(address: str | None, workers: int) -> None:
    if address and workers == 0:
        warn(f"--address {address} is ignored with --workers 0 (everything runs in-process, "
             "without Ray)")


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
            # "local": a Ray of this process's own, even where another process on this
            # machine runs one (ray.init() would attach to it and refuse num_cpus).
            ray.init(address="local", num_cpus=max(workers, os.cpu_count() or 1), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"at {address}" if address else "locally"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not start or reach Ray {where}: {first_line}") from None


def _check_reachable(address: str) -> None:
    """Fail within seconds, in one line, where ray.init would wait for minutes or print
    20 s of log lines: nobody listens at HOST:PORT, something that is not a Ray head does,
    or the head wants an authentication token this process does not have."""
    if address == "auto" or "://" in address:
        return  # `auto` finds the local cluster itself; ray:// goes through Ray Client
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"bad Ray address {address!r}: expected auto or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as sock:
            speaks_http2 = _answers_http2(sock)
    except OSError as err:
        raise UserError(f"could not reach Ray at {address}: {err.strerror or err}") from None
    if not speaks_http2:
        raise UserError(f"{address} is not a Ray head: it does not answer gRPC (Ray's GCS "
                        "protocol); give the address `ray start --head` printed (port 6379 "
                        "by default)")
    _check_token(address)


def _answers_http2(sock: socket.socket) -> bool:
    """Whether the peer answers an HTTP/2 client preface with a SETTINGS frame, as every
    gRPC server (Ray's GCS among them) does at once; a web server, a database or a silent
    port does not."""
    try:
        sock.sendall(HTTP2_PREFACE + EMPTY_SETTINGS_FRAME)
        header = b""
        while len(header) < 9:  # a frame header: length (3), type (1), flags (1), stream (4)
            chunk = sock.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:  # a timeout, a reset
        return False
    return header[3] == SETTINGS_FRAME_TYPE


def _check_token(address: str) -> None:
    """One unary call to the GCS with the token this process would send (if any): a head
    started with token authentication (the default of recent Ray) answers UNAUTHENTICATED."""
    import grpc

    token = local_auth_token()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(GCS_PROBE_METHOD)  # raw bytes in and out
        try:
            call(b"", timeout=CONNECT_TIMEOUT_S, metadata=metadata)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise UserError(
                    f"the Ray cluster at {address} requires an authentication token and "
                    f"{'ours was refused' if token else 'none is set here'}: run `ray "
                    "get-auth-token` on the head and set RAY_AUTH_TOKEN=<token> (or "
                    "RAY_AUTH_TOKEN_PATH=<file>) and RAY_AUTH_MODE=token") from None
            # Any other answer (even an error) came from a gRPC server: ray.init decides.


def local_auth_token() -> str | None:
    """The token Ray would send: $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token (Ray's own lookup order)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class ActorPool:
    """K Ray actors of one class, created once, for collect and for rollouts alike.

    `run(method, tasks)` keeps TASKS_PER_ACTOR tasks in flight per actor (one running, one
    queued: an actor never waits for the driver) and yields (task index, result) as each
    finishes. An actor that dies is replaced by a fresh one and its tasks are resubmitted;
    an actor slot that dies MAX_DEATHS times without finishing a task in between is given
    up on with a UserError, so a task that kills every actor does not loop forever."""

    TASKS_PER_ACTOR = 2
    MAX_DEATHS = 3

    def __init__(self, actor_cls: type, args: tuple, workers: int, address: str | None = None):
        import ray

        ensure_ray(address, workers)
        self.remote_cls = ray.remote(num_cpus=1)(actor_cls)
        # Arguments (the weights) go to the object store once, not once per actor.
        self.args = tuple(ray.put(a) for a in args)
        self.actors = [self._new_actor() for _ in range(workers)]
        self.deaths = [0] * workers

    def _new_actor(self):
        return self.remote_cls.remote(*self.args)

    def run(self, method: str, tasks: list[tuple]) -> Iterator[tuple[int, Any]]:
        import ray
        from ray.exceptions import RayActorError

        todo = deque(range(len(tasks)))
        pending: dict = {}  # object ref -> (task index, actor slot, the actor it went to)

        def submit(slot: int) -> None:
            if todo:
                i, actor = todo.popleft(), self.actors[slot]
                pending[getattr(actor, method).remote(*tasks[i])] = (i, slot, actor)

        for slot in range(len(self.actors)):
            for _ in range(self.TASKS_PER_ACTOR):
                submit(slot)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, slot, actor = pending.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as err:
                todo.appendleft(i)
                if actor is self.actors[slot]:  # not a task of an actor already replaced
                    self._replace(slot, err)
                submit(slot)
                continue
            self.deaths[slot] = 0
            submit(slot)
            yield i, result

    def _replace(self, slot: int, err: Exception) -> None:
        import ray

        self.deaths[slot] += 1
        if self.deaths[slot] >= self.MAX_DEATHS:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"Ray worker {slot} died {self.deaths[slot]} times in a row; "
                            f"giving up ({first})")
        ray.kill(self.actors[slot])
        self.actors[slot] = self._new_actor()

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
