"""Joining a Ray cluster: a port that is not Ray, or a head that wants a token, fails within
seconds in one line; a real 2-node cluster runs collect and evolve as local work does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from worldmodels import ray_session
from worldmodels.errors import UserError


class Listener:
    """A TCP server on 127.0.0.1 that answers every connection with `reply` (None: silence)."""

    def __init__(self, reply: bytes | None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply, self.open = reply, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(conn)
            if self.reply is not None:
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.open:
            conn.close()


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"", None])
def test_a_port_that_is_not_ray_fails_fast(monkeypatch, reply):
    monkeypatch.setattr(ray_session, "CONNECT_TIMEOUT_S", 1.0)  # the silent one waits this
    server = Listener(reply)
    try:
        start = time.perf_counter()
        with pytest.raises(UserError, match=f"{server.address} is not a Ray head"):
            ray_session._check_reachable(server.address)
        assert time.perf_counter() - start < 3.0
    finally:
        server.close()


class Unauthenticated(grpc.GenericRpcHandler):
    """Every call refused as a Ray head with token authentication refuses a caller without
    the token."""

    def service(self, handler_call_details):
        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "Invalid or missing token")
        return grpc.unary_unary_rpc_method_handler(refuse)


def test_a_head_that_wants_a_token_says_what_to_set(monkeypatch, tmp_path):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((Unauthenticated(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no_token_here"))
    try:
        start = time.perf_counter()
        with pytest.raises(UserError, match="requires an authentication token and none is "
                                            "set here.*RAY_AUTH_TOKEN=<token>"):
            ray_session._check_reachable(address)
        assert time.perf_counter() - start < 5.0
        monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
        with pytest.raises(UserError, match="ours was refused"):
            ray_session._check_reachable(address)
    finally:
        server.stop(grace=None)


CLUSTER_JOB = Path(__file__).with_name("ray_cluster_job.py")


def test_collect_and_evolve_on_a_two_node_cluster_match_local_work(tmp_path):
    # Its own Ray in a subprocess: the suite's shared session stays as it is.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[1]), str(Path(__file__).parent)])}
    done = subprocess.run([sys.executable, str(CLUSTER_JOB), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2
    assert result["collect_equal"] and result["evolve_equal"]
