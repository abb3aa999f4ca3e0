"""The bench's webhook receiver: its parser splits a connection's bytes into
requests however they arrive, and it counts deliveries by id, per path; the
server answers keep-alive POSTs with 204 over one connection."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bench.receiver import BadRequest, Counts, ReceiverProcess, Request, RequestParser

TWO = (b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nwebhook-id: a\r\n\r\nhello"
       b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def test_requests_come_out_whole_however_the_bytes_are_split() -> None:
    for cut in range(1, len(TWO)):
        parser = RequestParser()
        got = parser.feed(TWO[:cut]) + parser.feed(TWO[cut:])
        assert [(r.method, r.path, r.body) for r in got] == [("POST", "/hook", b"hello"),
                                                             ("POST", "/hook", b"")]
        assert got[0].headers["webhook-id"] == "a" and got[0].keep_alive
        assert not got[1].keep_alive


@pytest.mark.parametrize(("raw", "status"), [
    (b"POST /hook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST /hook HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    (b"NONSENSE\r\n\r\n", 400),
    (b"POST /hook HTTP/1.1\r\nno colon here\r\n\r\n", 400),
])
def test_what_it_does_not_understand_is_refused(raw: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as exc:
        RequestParser().feed(raw)
    assert exc.value.status == status


def test_deliveries_are_counted_by_id_per_path() -> None:
    counts = Counts()

    def post(path: str, **headers: str) -> None:
        counts.count(Request("POST", path, headers, b"{}"))

    post("/product", **{"webhook-id": "e1"})
    post("/product", **{"webhook-id": "e2"})
    post("/product", **{"webhook-id": "e1"})  # a redelivery
    post("/baseline", **{"ce-id": "e1"})      # another path: counted apart
    post("/baseline")
    assert {p: c.as_json() for p, c in counts.paths.items()} == {
        "/product": {"requests": 3, "distinct": 2, "duplicates": 1, "without_id": 0},
        "/baseline": {"requests": 2, "distinct": 1, "duplicates": 0, "without_id": 1}}


async def test_the_process_answers_keep_alive_posts_and_counts_them() -> None:
    receiver = ReceiverProcess()
    await receiver.start()
    try:
        transport = httpx.AsyncHTTPTransport()
        async with httpx.AsyncClient(transport=transport,
                                     limits=httpx.Limits(max_connections=1)) as client:
            answers = await asyncio.gather(*(
                client.post(receiver.url("/hook"), content=b'{"n": %d}' % i,
                            headers={"webhook-id": f"id-{i % 5}"}) for i in range(10)))
        assert {a.status_code for a in answers} == {204}
        assert await receiver.stats() == {
            "/hook": {"requests": 10, "distinct": 5, "duplicates": 5, "without_id": 0}}
    finally:
        await receiver.stop()
