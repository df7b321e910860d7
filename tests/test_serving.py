"""The HTTP server (promptcls.serving), through real HTTP on 127.0.0.1: results equal direct scoring, bad
requests get a 4xx saying why, a full queue a 503, and shutdown answers the requests in flight."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from promptcls import PromptClassifier
from promptcls.serving import Batcher, QueueFull, create_app

uvicorn = pytest.importorskip("uvicorn")

TEXTS = ["the food was great", "it was terrible , really awful", "nice staff", "bad service", "fun film",
         "the price was not cheap", "i love this place", "boring"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, classifiers, **options):
        self.port = free_port()
        config = uvicorn.Config(create_app(classifiers, **options), host="127.0.0.1", port=self.port,
                                log_level="error", timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(60)

    def __exit__(self, *exc):
        self.stop()

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def classifiers(_models, tokenizers):
    model, tok = _models["bert"], tokenizers["wordpiece"]
    sentiment = PromptClassifier(model, "{text} It was [MASK].", {"neg": ["bad", "terrible"], "pos": ["good"]},
                                 tokenizer=tok, progress=False).fit()
    pair = PromptClassifier(model, "{premise} ? [MASK] , {hypothesis}", {"no": ["no"], "yes": ["yes"]},
                            tokenizer=tok, progress=False).fit()
    return {"sentiment": sentiment, "pair": pair}


def test_concurrent_requests_get_direct_scores(classifiers):
    direct = classifiers["sentiment"].predict_proba(TEXTS)
    pairs = [{"premise": "the food was great", "hypothesis": "it was bad"}, {"premise": "fun", "hypothesis": "nice"}]
    with Server(classifiers, max_batch=16, max_wait=0.01) as server:
        assert server.request("GET", "/healthz") == (200, {"status": "ok"})
        assert server.request("GET", "/readyz")[1]["status"] == "ready"
        status, tasks = server.request("GET", "/v1/tasks")
        assert status == 200 and {t["name"]: t["classes"] for t in tasks["tasks"]} == {
            "sentiment": ["neg", "pos"], "pair": ["no", "yes"]}
        assert server.request("GET", "/openapi.json")[1]["paths"]["/v1/classify"]

        def one(i):
            if i % 5 == 4:
                return "pair", server.request("POST", "/v1/classify", {"task": "pair", "texts": pairs})
            k = i % len(TEXTS)
            return k, server.request("POST", "/v1/classify", {"task": "sentiment", "texts": TEXTS[k:k + 2]})

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(48)))
        assert server.request("GET", "/readyz")[1]["arriving"] == 0  # every request counted in was counted out
    pair_direct = classifiers["pair"].predict_proba(pairs)
    for key, (status, body) in answers:
        assert status == 200, body
        expected = pair_direct if key == "pair" else direct[key:key + 2]
        np.testing.assert_allclose(body["probabilities"], expected, atol=1e-6)
        assert body["labels"] == [body["classes"][i] for i in np.argmax(expected, 1)]


def test_bad_requests_get_a_4xx_that_says_why(classifiers):
    with Server(classifiers) as server:
        status, body = server.request("POST", "/v1/classify", {"task": "nope", "texts": ["x"]})
        assert status == 404 and "unknown task 'nope'; tasks are ['pair', 'sentiment']" in body["detail"]
        status, body = server.request("POST", "/v1/classify", {"task": "pair", "texts": ["only one field"]})
        assert status == 422 and "texts do not fit task 'pair'" in body["detail"]
        status, body = server.request("POST", "/v1/classify", {"task": "sentiment", "texts": []})
        assert status == 422 and body["detail"][0]["loc"][-1] == "texts"
        status, body = server.request("POST", "/v1/classify", {"texts": ["x"]})
        assert status == 422 and body["detail"][0]["loc"][-1] == "task"
        assert server.request("GET", "/readyz")[1]["arriving"] == 0  # refused requests are not waited for


class Gate:
    """A classifier whose scoring waits until the test opens the gate."""

    def __init__(self, clf):
        self.clf, self.open, self.entered = clf, threading.Event(), threading.Event()
        self.classes_, self.template_, self.columns = clf.classes_, clf.template_, None

    def decision_function(self, rows):
        self.entered.set()
        assert self.open.wait(60)
        return self.clf.decision_function(rows)


def test_a_full_queue_answers_503_and_shutdown_drains(classifiers):
    gate = Gate(classifiers["sentiment"])
    server = Server({"sentiment": gate}, max_batch=1, max_wait=0.0, max_queue=2).__enter__()
    pool = ThreadPoolExecutor(4)
    try:
        first = pool.submit(server.request, "POST", "/v1/classify", {"task": "sentiment", "texts": TEXTS[:1]})
        assert gate.entered.wait(30)  # the worker holds the first request
        queued = [pool.submit(server.request, "POST", "/v1/classify", {"task": "sentiment", "texts": TEXTS[i:i + 1]})
                  for i in (1, 2)]
        time.sleep(0.5)
        status, body = server.request("POST", "/v1/classify", {"task": "sentiment", "texts": TEXTS[3:4]})
        assert status == 503 and "the request queue is full (2 requests)" in body["detail"]
        stopper = threading.Thread(target=server.stop)
        stopper.start()  # shutdown begins with three requests in flight
        time.sleep(0.5)
        gate.open.set()
        stopper.join(60)
        for future, i in zip([first, *queued], (0, 1, 2)):
            status, body = future.result(60)
            assert status == 200, body
            np.testing.assert_allclose(body["probabilities"], classifiers["sentiment"].predict_proba(TEXTS[i:i + 1]),
                                       atol=1e-6)
    finally:
        gate.open.set()
        pool.shutdown()
        if server.thread.is_alive():
            server.stop()


def test_the_batcher_gathers_and_refuses_when_closed(classifiers):
    batcher = Batcher(classifiers, max_batch=64, max_wait=0.05)
    futures = [batcher.submit("sentiment", [{"text": t}]) for t in TEXTS]  # rows keyed by field
    got = np.concatenate([f.result(30) for f in futures])
    np.testing.assert_allclose(got, classifiers["sentiment"].predict_proba(TEXTS), atol=1e-6)
    batcher.close(30)
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit("sentiment", [{"text": "x"}])
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(classifiers, max_batch=0)


def test_behind_the_server_the_batcher_waits_only_for_requests_on_their_way(classifiers):
    batcher = Batcher(classifiers, max_batch=64, max_wait=30.0, arrivals=True)
    try:
        started = time.monotonic()
        batcher.submit("sentiment", [{"text": "x"}]).result(60)
        assert time.monotonic() - started < 15  # nothing on its way: it did not sit out max_wait (30 s)
        batcher.arriving = 1  # the app is reading one more request
        first = batcher.submit("sentiment", [{"text": TEXTS[0]}])
        time.sleep(0.3)
        assert not first.done()  # it waits for the request on its way
        second = batcher.submit("sentiment", [{"text": TEXTS[1]}])
        batcher.arriving = 0
        got = np.concatenate([first.result(60), second.result(60)])
        assert time.monotonic() - started < 15
        assert batcher.batches == 2 and batcher.rows_scored == 3  # the two came in one batch
        np.testing.assert_allclose(got, classifiers["sentiment"].predict_proba(TEXTS[:2]), atol=1e-6)
    finally:
        batcher.close(30)
