"""An HTTP server over fitted classifiers: FastAPI on uvicorn, requests gathered into batches.

    POST /v1/classify   {"task": NAME, "texts": [...]}  ->  {"labels", "probabilities", "classes"}
    GET  /v1/tasks      every task with its classes and template fields
    GET  /healthz       the process is up;  GET /readyz: the models are loaded and the worker runs
    GET  /docs          OpenAPI docs (FastAPI's)

One worker thread owns the models. Requests from any number of clients wait in one bounded queue; the
worker takes the first, gathers more for at most ``max_wait`` seconds or until ``max_batch`` rows, and
scores them together. Behind the HTTP server it waits only while more requests are on their way: the app
counts the classify requests it is reading, and when none is (every request that has arrived is queued),
the worker starts at once instead of sitting out ``max_wait`` (:class:`promptcls.multitask.TaskSet`: rows of tasks that share the model's forward run
in one, batched by length). A full queue answers 503
at once; bad input answers 4xx saying why (an unknown task 404, rows that do not fit the template
422). On shutdown the server stops taking connections, the requests already queued are scored and
answered, then the worker stops.

Several saves of one base model share it (``PromptClassifier.from_pretrained(dir, model=...)``): their
base weights are in memory once.
"""


import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .multitask import TaskSet, load_tasks

logger = logging.getLogger(__name__)

__all__ = ["Batcher", "QueueFull", "create_app", "load_tasks"]


class QueueFull(RuntimeError):
    """The request queue is at its bound."""


@dataclass
class _Request:
    task: str
    rows: list[Any]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """One worker thread scoring queued requests in batches: ``submit(task, rows)``, rows as ``{field: text}``
    (:func:`promptcls.inputs.to_rows`), returns a Future of the (n, C) class probabilities."""

    def __init__(self, classifiers: Mapping[str, Any], max_batch: int = 64, max_wait: float = 0.005,
                 max_queue: int = 256, arrivals: bool = False) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError(f"max_batch ({max_batch}) and max_queue ({max_queue}) must be >= 1, max_wait "
                             f"({max_wait}) >= 0")
        self.classifiers = dict(classifiers)
        self.tasks = TaskSet(self.classifiers)
        self.max_batch, self.max_wait = max_batch, max_wait
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=max_queue)
        self._closed = threading.Event()
        self.batches = self.rows_scored = 0  # counters: how well requests are gathered
        # with ``arrivals``, the caller counts requests on their way (``arriving``): the worker waits only for those
        self.arrivals = arrivals
        self.arriving = 0
        self._thread = threading.Thread(target=self._work, name="promptcls-batcher", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._closed.is_set()

    def submit(self, task: str, rows: list[Any]) -> concurrent.futures.Future:
        if self._closed.is_set():
            raise QueueFull("the server is shutting down")
        request = _Request(task, rows)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"the request queue is full ({self._queue.maxsize} requests): retry later") from None
        return request.future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests; the worker answers every queued one, then stops."""
        self._closed.set()
        self._queue.put(None)  # wakes the worker; it drains what is before it
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, rows = [first], len(first.rows)
            deadline = time.monotonic() + self.max_wait
            stop = False
            while rows < self.max_batch:
                try:
                    if self.arrivals:
                        item = self._queue.get_nowait()
                    else:
                        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if not self.arrivals or self.arriving <= 0 or left <= 0:
                        break  # the wait is over, or nothing more is on its way
                    try:
                        item = self._queue.get(timeout=min(left, 0.0005))
                    except queue.Empty:
                        continue
                if item is None:
                    stop = True
                    break
                batch.append(item)
                rows += len(item.rows)
            self._score(batch)
            if stop:
                self._drain()
                return

    def _drain(self) -> None:
        rest = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                rest.append(item)
        if rest:
            self._score(rest)

    def _score(self, batch: list[_Request]) -> None:
        """Every request of the batch in one ``TaskSet`` call: the rows of tasks that join share each forward."""
        self.batches += 1
        self.rows_scored += sum(len(r.rows) for r in batch)
        by_task: dict[str, list[_Request]] = {}
        for request in batch:
            by_task.setdefault(request.task, []).append(request)
        try:
            scores = self.tasks.score_rows({t: [row for r in rs for row in r.rows] for t, rs in by_task.items()})
        except Exception:  # noqa: BLE001 - one bad request must not take the others down: score each on its own
            for r in batch:
                self._score_one(r)
            return
        for task, requests in by_task.items():
            proba = _softmax(scores[task])
            start = 0
            for r in requests:
                r.future.set_result(proba[start:start + len(r.rows)])
                start += len(r.rows)

    def _score_one(self, request: _Request) -> None:
        try:
            request.future.set_result(_softmax(self.tasks.score_rows({request.task: request.rows})[request.task]))
        except Exception as e:  # noqa: BLE001
            request.future.set_exception(e)


def _softmax(scores: Any) -> Any:
    import numpy as np

    z = np.exp(scores - scores.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def create_app(classifiers: Mapping[str, Any], *, max_batch: int = 64, max_wait: float = 0.005,
               max_queue: int = 256, max_texts: int = 1024):
    """The FastAPI app over ``classifiers`` (fitted, by task name)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    from .inputs import to_rows

    class ClassifyRequest(BaseModel):
        task: str = Field(description="a task name from GET /v1/tasks")
        texts: list[str | dict[str, str]] = Field(min_length=1, max_length=max_texts,
                                                  description="texts, or rows as {field: text} for multi-field templates")

    class ClassifyResponse(BaseModel):
        labels: list[Any]
        probabilities: list[list[float]]
        classes: list[Any]

    state: dict[str, Batcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(classifiers, max_batch=max_batch, max_wait=max_wait, max_queue=max_queue,
                                   arrivals=True)
        try:
            yield
        finally:  # uvicorn has finished the requests in flight; answer what is queued, then stop
            await asyncio.to_thread(state["batcher"].close)

    app = FastAPI(title="promptcls", description="Prompt-based text classification", lifespan=lifespan)

    class CountArrivals:
        """ASGI middleware: a classify request counts as arriving from its first byte until it is queued (the
        handler uncounts it) or answered without being queued (here)."""

        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            batcher = state.get("batcher")
            if scope["type"] != "http" or scope.get("path") != "/v1/classify" or batcher is None:
                return await self.app(scope, receive, send)
            scope.setdefault("state", {})["promptcls_arriving"] = True
            batcher.arriving += 1
            try:
                await self.app(scope, receive, send)
            finally:
                if scope["state"].pop("promptcls_arriving", False):
                    batcher.arriving -= 1

    app.add_middleware(CountArrivals)

    def queued(raw: Request) -> None:
        if raw.scope.get("state", {}).pop("promptcls_arriving", False):
            state["batcher"].arriving -= 1

    def plain(value: Any) -> Any:
        return value.item() if hasattr(value, "item") else value

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        batcher = state.get("batcher")
        if batcher is None or not batcher.running:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return {"status": "ready", "tasks": len(classifiers), "batches": batcher.batches,
                "rows_scored": batcher.rows_scored, "arriving": batcher.arriving}

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": [{"name": name, "classes": [plain(c) for c in clf.classes_],
                           "fields": list(clf.template_.fields), "template": clf.template_.source}
                          for name, clf in classifiers.items()]}

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(request: ClassifyRequest, raw: Request):
        clf = classifiers.get(request.task)
        if clf is None:
            raise HTTPException(404, f"unknown task {request.task!r}; tasks are {sorted(classifiers)}")
        try:
            rows = to_rows(request.texts, clf.template_.fields, getattr(clf, "columns", None))
        except (ValueError, TypeError, KeyError) as e:
            raise HTTPException(422, f"texts do not fit task {request.task!r} (fields {list(clf.template_.fields)}): "
                                     f"{e}") from None
        try:
            future = state["batcher"].submit(request.task, rows)
        except QueueFull as e:
            return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": "1"})
        finally:
            queued(raw)
        try:
            proba = await asyncio.wrap_future(future)
        except (ValueError, TypeError, KeyError) as e:
            raise HTTPException(422, str(e)) from None
        classes = [plain(c) for c in clf.classes_]
        return {"labels": [classes[i] for i in proba.argmax(1)], "probabilities": proba.tolist(), "classes": classes}

    return app


def serve(classifiers: Mapping[str, Any], host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Run the server until interrupted (SIGINT / SIGTERM finish the requests in flight first)."""
    import uvicorn

    uvicorn.run(create_app(classifiers, **options), host=host, port=port, log_level="info")
