"""Connection balancing between workers (serve/balance.py): two middleware instances share one table, as two
worker processes do; the one holding every client asks them to reconnect, one per interval, until the counts
are even, and answers are passed through unchanged."""

from __future__ import annotations

import asyncio

from slimship.serve.balance import BalanceConnections, SharedCounts


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _request(worker: BalanceConnections, client_port: int) -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/classify", "client": ("127.0.0.1", client_port),
             "server": ("127.0.0.1", 3000)}
    asyncio.run(worker(scope, receive, send))
    return sent


def _asked_to_close(sent: list[dict]) -> bool:
    return (b"connection", b"close") in sent[0]["headers"]


def test_an_overfull_worker_asks_its_extra_clients_to_reconnect(tmp_path, monkeypatch):
    table = str(tmp_path / "counts")
    # Counts are published once per "update"; here one update per round, forced below.
    busy = BalanceConnections(_app, workers=2, worker_index=lambda: 0, interval_s=0.0, update_s=3600,
                              table_path=table)
    idle = BalanceConnections(_app, workers=2, worker_index=lambda: 1, interval_s=0.0, update_s=3600,
                              table_path=table)
    # 32 clients, all on the busy worker: every answer is still a normal 200 with its body.
    first = [_request(busy, port) for port in range(40000, 40032)]
    assert all(s[0]["status"] == 200 and s[1]["body"] == b"ok" for s in first)
    # A client asked to reconnect opens a new connection, which the idle worker accepts here.
    on_busy, on_idle, next_port = list(range(40000, 40032)), [], 50000
    for _ in range(10):                       # rounds: every client sends one request
        busy.next_update = idle.next_update = 0.0
        for port in list(on_busy):
            if _asked_to_close(_request(busy, port)):
                on_busy.remove(port)
                on_idle.append(next_port)
                next_port += 1
        for port in on_idle:
            assert not _asked_to_close(_request(idle, port))
    assert busy.closed == len(on_idle) and 15 <= len(on_busy) <= 17      # even, within the slack of one
    counts = SharedCounts(table, 2, 0).values[:, 0]
    assert counts[1] == len(on_idle)
    # Once even, nobody is asked to reconnect any more.
    busy.next_update = 0.0
    assert not any(_asked_to_close(_request(busy, port)) for port in on_busy)


def test_one_worker_outside_a_worker_or_no_shared_file_changes_nothing(tmp_path):
    for workers, index, table in ((1, 0, tmp_path / "t"), (2, None, tmp_path / "t"),
                                  (2, 0, tmp_path / "missing-dir" / "t")):
        middleware = BalanceConnections(_app, workers=workers, worker_index=lambda i=index: i,
                                        interval_s=0.0, update_s=0.0, table_path=str(table))
        for port in range(40000, 40010):
            sent = _request(middleware, port)
            assert sent[0]["headers"] == [(b"content-type", b"text/plain")]
        assert middleware.closed == 0 and middleware.table is None
