"""A submission whose answer is lost is not queued twice: ``herd submit`` sends an Idempotency-Key and,
when the connection fails, sends the same request with the same key once more; the server answers the
retry with the job the first try made."""

from __future__ import annotations

import socket
import threading

import pytest

from agent.cli import main
from tests.test_api_limits import Served


def _read_message(conn: socket.socket) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (what httpx sends and uvicorn answers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class LosesFirstAnswer:
    """A proxy in front of the server: the first request reaches the server, which saves the job and
    answers, but the answer never reaches the client (the connection is cut); later ones pass."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with client, socket.create_connection(("127.0.0.1", self.upstream)) as server:
                while True:
                    request = _read_message(client)
                    if not request:
                        break
                    self.requests.append(request)
                    server.sendall(request)
                    answer = _read_message(server)
                    if len(self.requests) == 1:
                        break  # the job is saved; its answer is lost with the connection
                    client.sendall(answer)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def lossy(api):
    with Served(api.http.app) as served:
        proxy = LosesFirstAnswer(served.port)
        yield api, proxy
        proxy.close()


def test_herd_submit_retries_a_lost_answer_with_the_same_key_and_queues_one_job(lossy, capsys):
    api, proxy = lossy
    code = main(["submit", "--url", f"http://127.0.0.1:{proxy.port}", "--gpus", "1", "--", "python", "train.py"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("Submitted job 1 "), out
    keys = [line for request in proxy.requests for line in request.split(b"\r\n")
            if line.lower().startswith(b"idempotency-key:")]
    assert len(proxy.requests) == 2 and len(keys) == 2 and keys[0] == keys[1]
    assert [j["id"] for j in api.all_jobs()] == [1]  # the retry did not queue a second job
