"""Hostile and odd clients against a real ``mdsvqa serve`` on loopback (tiny model, no Label Studio).

What must hold whatever peers do: idle, half-sent and slow connections never keep /health
from answering; /predict requests waiting on media that never arrives never take the
threads /health, /setup and /webhook need; every malformed body is a 400 (413 when too
large, however it is framed), never a 500; made-up webhook actions never become metric
labels. Every wait is on a condition with a bound, and "still waiting" is shown by what
has not happened yet (a /predict not answered, a download still held), never by timing.
"""

from __future__ import annotations

import json
import select
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ml_backend.server.app import MAX_BODY_BYTES, predict_wait_slots
from tests.labelstudio_support import REPO, start_backend, stop_process, wait_for
from tests.stall_server import StallServer

pytestmark = pytest.mark.slow

LABEL_CONFIG = (REPO / "label_config.xml").read_text()
THREADS = 4
ANSWER_S = 10  # generous: the protocol gives /health 1 s and /setup 3 s; the old server took ~99 s


@pytest.fixture(scope="module")
def backend(tiny_model, tmp_path_factory):
    base, adapter = tiny_model
    home = tmp_path_factory.mktemp("hostile")
    served = start_backend(base=base, adapter=adapter, cache_dir=home / "cache", log=home / "backend.log",
                           extra_env={"MDSVQA_THREADS": str(THREADS), "MDSVQA_PRIORITY_ENABLED": "false",
                                      # /predict would wait on the stalled media for a long time
                                      "MDSVQA_PREDICT_DEADLINE_S": "90", "MDSVQA_MEDIA_TIMEOUT_S": "120"})
    yield served
    stop_process(served.process)


@pytest.fixture
def stall():
    server = StallServer()
    yield server
    server.close()


def setup_project(backend, project: int | str) -> requests.Response:
    return requests.post(backend.url + "/setup", json={"project": f"{project}.1700000000", "schema": LABEL_CONFIG},
                         timeout=ANSWER_S)


def connect(backend) -> socket.socket:
    return socket.create_connection(("127.0.0.1", backend.port), timeout=5)


def still_open(sock: socket.socket) -> bool:
    """The server has neither answered nor closed this connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def status_of(sock: socket.socket) -> int:
    """Read the status code of the response on ``sock``."""
    sock.settimeout(ANSWER_S)
    head = b""
    while b"\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            break
        head += data
    return int(head.split(b" ", 2)[1])


# -- slow and silent clients ------------------------------------------------------------------------

def test_idle_and_half_sent_connections_do_not_block_the_protocol_routes(backend):
    held: list[socket.socket] = []
    try:
        held += [connect(backend) for _ in range(32)]  # connected, nothing sent
        for _ in range(32):  # half the headers, then nothing
            sock = connect(backend)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: half-se")
            held.append(sock)
        for _ in range(8):  # whole headers, half the body
            sock = connect(backend)
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 200\r\n\r\n{\"action\": \"ANNOTATION_CREATED\", ")
            held.append(sock)

        health = requests.get(backend.url + "/health", timeout=ANSWER_S)
        assert health.status_code == 200 and health.json()["status"] == "UP"
        assert setup_project(backend, 21).status_code == 200
        hook = requests.post(backend.url + "/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 21}},
                             timeout=ANSWER_S)
        assert hook.status_code == 200
        # tolerated, not dropped to make room: every slow client is still connected, unanswered
        assert all(still_open(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()


def test_protocol_routes_answer_while_predicts_wait_on_stalled_media(backend, stall):
    assert setup_project(backend, 22).status_code == 200
    count = THREADS + 2  # more /predict requests than request threads
    slots = predict_wait_slots(THREADS)
    assert slots < count

    def predict(i: int) -> requests.Response:
        body = {"tasks": [{"id": 1000 + i, "data": {"video": f"{stall.url}/stalled-{i}.mp4"}}],
                "project": "22.1700000000", "label_config": LABEL_CONFIG}
        return requests.post(backend.url + "/predict", json=body, timeout=120)

    pool = ThreadPoolExecutor(count)
    try:
        futures = [pool.submit(predict, i) for i in range(count)]
        # every request's video is queued and the downloads hang on the stalled server
        wait_for(lambda: backend.health()["queue_length"] >= count and stall.held >= 1, timeout=30,
                 what="every /predict's video queued, downloads hanging")
        # beyond the waiting slots, /predict answers at once: nothing cached, the video deferred
        wait_for(lambda: sum(f.done() for f in futures) >= count - slots, timeout=30,
                 what="the /predict requests beyond the waiting slots answered")

        health = requests.get(backend.url + "/health", timeout=ANSWER_S)
        setup = setup_project(backend, 22)
        hook = requests.post(backend.url + "/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 22},
                                                             "annotation": {"id": 1, "result": []}},
                             timeout=ANSWER_S)
        waiting = [f for f in futures if not f.done()]
        assert health.status_code == 200 and health.json()["queue_length"] >= 1
        assert setup.status_code == 200 and hook.status_code == 200
        assert hook.json()["status"] == "recorded"
        # ...and all the while, /predict requests were still waiting on media nobody sent
        assert waiting and len(waiting) <= slots, (len(waiting), slots)
        assert stall.held >= 1 and not stall.released.is_set()
        for answered in (f.result() for f in futures if f.done()):
            assert answered.status_code == 200 and answered.json()["results"] == [[]]
            assert "still scoring" in answered.json()["errors"][0]["error"]

        stall.release()  # the downloads fail now: the waiting requests answer with that error
        for future in futures:
            response = future.result(timeout=60)
            assert response.status_code == 200 and response.json()["results"] == [[]]
        wait_for(lambda: backend.health()["queue_length"] == 0, timeout=60, what="queue drained")
    finally:
        stall.release()
        pool.shutdown(wait=True)


# -- odd bodies -------------------------------------------------------------------------------------

DEEP = b"[" * 200_000 + b"]" * 200_000
PREDICT = {"tasks": [], "project": "1.1700000000", "label_config": LABEL_CONFIG}


@pytest.mark.parametrize("route, body", [
    ("/predict", json.dumps({**PREDICT, "label_config": 5})),
    ("/predict", json.dumps({**PREDICT, "label_config": ["<View/>"]})),
    ("/setup", json.dumps({"project": "1.1700000000", "schema": 5})),
    ("/predict", DEEP),
    ("/setup", DEEP),
    ("/webhook", DEEP),
    ("/webhook", b'{"action": "ANNOTATION_CREATED", "project": {"id": 1}, "x": ' + b"[" * 100 + b"]" * 100 + b"}"),
    ("/predict", b"{not json"),
    ("/setup", b"\xff\xfe\x00garbage"),
    ("/webhook", b""),
    # project ids that are not plain decimal integers in [1, 2^63 - 1]
    ("/predict", json.dumps(PREDICT).replace('"1.1700000000"', "1e400")),
    ("/predict", json.dumps({**PREDICT, "project": "1e400"})),
    ("/predict", json.dumps({**PREDICT, "project": "-3.1700000000"})),
    ("/predict", json.dumps({**PREDICT, "project": True})),
    ("/setup", json.dumps({"project": "1e400", "schema": LABEL_CONFIG})),
    ("/setup", json.dumps({"project": 2**63, "schema": LABEL_CONFIG})),
    ("/setup", json.dumps({"project": f"{2**63}.1700000000", "schema": LABEL_CONFIG})),
    ("/setup", json.dumps({"project": "0.1700000000", "schema": LABEL_CONFIG})),
    ("/setup", json.dumps({"project": "1" * 5000, "schema": LABEL_CONFIG})),
    ("/webhook", b'{"action": "ANNOTATION_CREATED", "project": {"id": 1e400}}'),
    ("/webhook", b'{"action": "ANNOTATION_CREATED", "project": 1e400}'),
    ("/webhook", json.dumps({"action": "START_TRAINING", "project": {"id": 2**63}})),
    ("/webhook", json.dumps({"action": "START_TRAINING", "project": {"id": 2**70}})),
    ("/webhook", json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 5.0}})),
    ("/webhook", b'{"action": "ANNOTATION_CREATED", "project": ' + b"9" * 5000 + b"}"),
])
def test_odd_bodies_are_bad_requests(backend, route, body):
    response = requests.post(backend.url + route, data=body, headers={"Content-Type": "application/json"},
                             timeout=ANSWER_S)
    assert response.status_code == 400, response.text[:300]
    assert "error" in response.json()


def test_largest_project_id_is_accepted(backend):
    assert setup_project(backend, 2**63 - 1).status_code == 200
    hook = requests.post(backend.url + "/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 2**63 - 1}},
                         timeout=ANSWER_S)
    assert hook.status_code == 200 and hook.json()["project"] == 2**63 - 1


def test_over_limit_body_with_content_length_is_413(backend):
    with connect(backend) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n{" % (MAX_BODY_BYTES + 1))
        assert status_of(sock) == 413


def test_over_limit_chunked_body_is_413(backend):
    chunk = b"[" + b" " * (1024 * 1024 - 1)
    with connect(backend) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent = 0
        while sent <= MAX_BODY_BYTES + 64 * 1024:  # a little past the limit, and no final chunk
            piece = chunk if sent + len(chunk) <= MAX_BODY_BYTES else chunk[:64 * 1024]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:  # refused before the end: the answer is waiting
                break
            sent += len(piece)
            if not still_open(sock):
                break
        assert status_of(sock) == 413


def test_made_up_webhook_actions_are_not_metric_labels(backend):
    for i in range(20):
        response = requests.post(backend.url + "/webhook", json={"action": f"MADE_UP_{i}", "project": {"id": 1}},
                                 timeout=ANSWER_S)
        assert response.status_code == 400
    metrics = backend.metrics()
    assert "MADE_UP" not in metrics
    assert 'mdsvqa_webhook_events_total{action="other",handling="rejected"}' in metrics
