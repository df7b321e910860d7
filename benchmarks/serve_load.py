"""``promptcls serve`` under load on loopback: 1, 8 and 32 concurrent clients, beside direct batched scoring.

The server (``promptcls serve``, FastAPI on uvicorn, ``--max-batch 64 --max-wait-ms 5``; both settable) runs in its own
process over saves on all-MiniLM-L6-v2 made by ``benchmarks/many_tasks.py`` (task 0 a soft prompt, task 1 a
trained head, ...). Each client is a thread with one keep-alive HTTP connection that sends requests of
``--texts-per-request`` SST-2 test sentences (1 by default), the next as soon as the last is answered, until the bounded number of requests
(``--requests``) is spent. With several tasks each request names the next task in turn, so the server's
batches mix tasks. Reported: texts/s over the whole run, p50 and p99 latency per request, and errors
(any answer but 200).

``--packing on off`` starts each server twice: as ``promptcls serve`` (its models pack a batch's prompts of mixed
lengths end to end, :mod:`promptcls.packing`) and with packing switched off (prompts padded to the longest, as
before packing), one after the other in the same run.

"Direct" is the same texts scored in-process in a fresh process on the same threads: one
``decision_function`` call (one task) or one ``TaskSet`` call (several), batched by length with the default
batch size (32), after a warm-up. The target: with 32 clients, at least 0.8x the direct throughput, no errors.
Run alone on a quiet machine::

    python benchmarks/serve_load.py                 # 1 task and 4 tasks; 1, 8, 32 clients; 1 text a request
    python benchmarks/serve_load.py --texts-per-request 8 --requests 256 --out benchmarks/results/serve_load_8_texts
    python benchmarks/serve_load.py --tasks 1 --clients 1 32
    python benchmarks/serve_load.py --packing on off    # the server with and without packing, side by side
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def texts(n: int) -> list[str]:
    from data import load_task

    _, _, test = load_task("sst2", 13)
    pool = test["text"].tolist()
    return [pool[i % len(pool)] for i in range(n)]


def direct(args) -> None:
    """In this (fresh) process: the texts scored in one call; prints texts/s."""
    import torch

    from promptcls import TaskSet

    torch.set_num_threads(args.threads)
    from many_tasks import minilm

    saves = {f"t{i}": p for i, p in enumerate(args.saves)}
    tasks = TaskSet.from_pretrained(saves, model=minilm())
    rows = texts(args.requests)
    which = [f"t{i % len(saves)}" for i in range(len(rows))]
    times = []
    with torch.inference_mode():
        tasks.decision_function(rows[:64], which[:64])  # warm-up
        for _ in range(args.rounds):
            t = time.perf_counter()
            tasks.decision_function(rows, which)
            times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"texts_per_s": len(rows) / times[len(times) // 2], "times": times}))


def serve_unpacked(argv: list[str]) -> None:
    """``promptcls serve`` with every model's packing off (``--packing off``): prompts run padded."""
    from promptcls import cli, serving

    loader = serving.load_tasks

    def unpacked(*a, **k):
        classifiers = loader(*a, **k)
        for clf in classifiers.values():
            clf.model_.packs = False
        return classifiers

    serving.load_tasks = unpacked
    cli.main(["serve", *argv])


def load(port: int, n_clients: int, n_requests: int, n_tasks: int, per_request: int = 1) -> dict:
    rows = texts(n_requests * per_request)
    lock = threading.Lock()
    state = {"next": 0}
    latencies, errors = [], []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= n_requests:
                break
            body = json.dumps({"task": f"t{i % n_tasks}", "texts": rows[i * per_request:(i + 1) * per_request]})
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/classify", body, {"content-type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as e:
                status, payload = -1, str(e).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            elapsed = time.perf_counter() - t
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    errors.append((status, payload[:200]))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"clients": n_clients, "requests": n_requests, "texts_per_request": per_request,
            "texts_per_s": n_requests * per_request / wall, "p50_ms": q(0.50),
            "p99_ms": q(0.99), "errors": len(errors), "first_error": errors[0][1].decode() if errors else None}


def stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/readyz")
    return json.loads(conn.getresponse().read())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=512, help="requests per run")
    parser.add_argument("--texts-per-request", type=int, default=1, help="texts in each request")
    parser.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms")
    parser.add_argument("--rounds", type=int, default=3, help="direct scoring: passes (the median is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of direct scoring (and the server's)")
    parser.add_argument("--server-threads", type=int, nargs="+",
                        help="the server's torch threads, one server per value (default: --threads)")
    parser.add_argument("--packing", nargs="+", choices=["on", "off"], default=["on"],
                        help="the server's models pack prompts of mixed lengths (on, promptcls's default) or run them "
                             "padded (off: as before packing); 'on off' runs both, side by side")
    parser.add_argument("--work", help="folder of the saves (benchmarks/many_tasks.py makes them; default: temporary)")
    parser.add_argument("--out", default=str(RESULTS / "serve_load"))
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--saves", nargs="*", help=argparse.SUPPRESS)
    if argv is None and sys.argv[1:2] == ["--serve-unpacked"]:
        serve_unpacked(sys.argv[2:])
        return 0
    args = parser.parse_args(argv)
    if args.direct:
        direct(args)
        return 0
    from many_tasks import make_saves

    work = Path(args.work or tempfile.mkdtemp(prefix="serve-load-"))
    saves = make_saves(work, max(args.tasks))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = []
    for n in args.tasks:
        done = subprocess.run([sys.executable, __file__, "--direct", "--saves", *map(str, saves[:n]), "--requests",
                               str(args.requests * args.texts_per_request), "--rounds", str(args.rounds), "--threads", str(args.threads)],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        base = json.loads(done.stdout.strip().splitlines()[-1])["texts_per_s"]
        for threads, packing in [(t, p) for t in args.server_threads or [args.threads] for p in args.packing]:
            port = free_port()
            # packing off: the same server, started through this script with every model's packing switched off
            launcher = [__file__, "--serve-unpacked"] if packing == "off" else ["-m", "promptcls", "serve"]
            cmd = [sys.executable, *launcher, "--port", str(port), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                   "--max-queue", "1024", "--threads", str(threads),
                   *[a for i, p in enumerate(saves[:n]) for a in ("--saved", f"t{i}={p}")]]
            server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.time() + 300
                while True:
                    try:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                        conn.request("GET", "/readyz")
                        if conn.getresponse().status == 200:
                            break
                    except OSError:
                        pass
                    if server.poll() is not None or time.time() > deadline:
                        raise SystemExit(f"the server did not start: {server.stderr.read()[-3000:]}")
                    time.sleep(0.5)
                load(port, 4, 64, n)  # warm-up
                for clients in args.clients:
                    before = stats(port)
                    row = {"tasks": n, "server_threads": threads, "packing": packing,
                           **load(port, clients, args.requests, n, args.texts_per_request), "direct_texts_per_s": base}
                    after = stats(port)
                    row["mean_batch"] = (after["rows_scored"] - before["rows_scored"]) / max(1, after["batches"]
                                                                                            - before["batches"])
                    row["vs_direct"] = row["texts_per_s"] / base
                    results.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                server.terminate()
                server.wait(60)
    write(results, args)
    return 0


def write(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/serve_load.py" + (f" --max-wait-ms {args.max_wait_ms:g}" if args.max_wait_ms != 5 else "") + (
        f" --texts-per-request {args.texts_per_request} --requests {args.requests}" if args.texts_per_request != 1 else "") + (
        f" --max-batch {args.max_batch}" if args.max_batch != 64 else "") + (
        f" --packing {' '.join(args.packing)}" if args.packing != ["on"] else "") + (f" --tasks {' '.join(map(str, args.tasks))}" if args.tasks != [1, 4]
                                                   else "") + (f" --server-threads {' '.join(map(str, args.server_threads))}"
                                                               if args.server_threads else "")
    meta = {"command": command, "cpu": platform.processor() or platform.machine(), "threads": args.threads,
            "requests": args.requests, "texts_per_request": args.texts_per_request}
    Path(f"{out}.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))
    lines = [
        "# `promptcls serve` under load (loopback, all-MiniLM-L6-v2)", "",
        f"Command: `{command}` (server and direct scoring on {args.threads} threads, {meta['cpu']}; the clients "
        "share the same cores). Each run sends "
        f"{args.requests} requests of {args.texts_per_request} SST-2 test sentence(s); with several tasks the requests "
        "name them in turn, "
        "so the server's batches mix tasks (`benchmarks/serve_load.py` says how). `direct`: the same texts scored "
        "in one in-process call, batched by length (batch size 32).", "",
        "| tasks | server threads | packing | clients | texts/s | p50 (ms) | p99 (ms) | errors | rows per batch | direct texts/s | vs direct |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['tasks']} | {r['server_threads']} | {r.get('packing', 'off')} | {r['clients']} | {r['texts_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{r['errors']} | {r['mean_batch']:.1f} | {r['direct_texts_per_s']:.0f} | {r['vs_direct']:.2f}x |")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for n, threads, packing in dict.fromkeys((r["tasks"], r["server_threads"], r.get("packing", "off")) for r in rows):
        mine = [r for r in rows if (r["tasks"], r["server_threads"], r.get("packing", "off")) == (n, threads, packing)]
        ax.plot([r["clients"] for r in mine], [r["vs_direct"] for r in mine], "o-" if packing == "on" else "o--",
                label=f"{n} task(s), {threads} thread(s), packing {packing}")
    ax.axhline(0.8, color="grey", ls="--", lw=1, label="target 0.8x")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("server texts/s / direct texts/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
