"""Data-parallel training under ``accelerate launch``: two CPU processes train what one process trains.

accelerate's ``--multi_gpu`` launcher is torch's distributed launcher; without CUDA promptcls joins
the process group with the gloo backend, so the test runs on CPU.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import conftest
    from promptcls import PromptClassifier
    from test_training import TEMPLATES, WORDS, X, Y

    tokenizer = conftest.make_wordpiece_tokenizer(__import__("pathlib").Path({tmp!r}))
    model = conftest._trainable_bert.__wrapped__({{"wordpiece": tokenizer}})[0]
    clf = PromptClassifier(model, TEMPLATES["head+prompt"], WORDS, tokenizer=tokenizer, train_mode="head+prompt",
                           epochs=3, train_batch_size=4, learning_rate=1e-2, prompt_learning_rate=1e-1,
                           progress=False).fit(X, Y)
    rank = int(os.environ.get("RANK", "0"))
    np.save(os.path.join({tmp!r}, f"scores-{{os.environ.get('WORLD_SIZE', '1')}}-{{rank}}.npy"), clf.decision_function(X))
    """
)


def test_two_processes_train_like_one(tmp_path):
    tests = str(Path(__file__).parent)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=tests, tmp=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": tests}
    subprocess.run([sys.executable, str(script)], check=True, env=env, timeout=300)
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))  # the venv's, unactivated
    subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", str(script)],
        check=True, env=env, timeout=600, capture_output=True,
    )
    single = np.load(tmp_path / "scores-1-0.npy")
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"scores-2-{rank}.npy"), single, atol=1e-4)


def test_accelerate_launch_shards_predict_and_writes_one_output(tmp_path, _trainable_bert):
    model, tokenizer = _trainable_bert
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    texts = [f"{a} film , {b} staff" for a in ("nice", "boring", "fun", "awful", "great") for b in ("bad", "good", "nice")]
    pd.DataFrame({"review": texts}).to_csv(tmp_path / "reviews.csv", index=False)
    args = ["predict", "--model", str(tmp_path / "tiny"), "--template", "{text} It was [MASK].", "--verbalizer",
            '{"0": ["bad"], "1": ["good", "nice"]}', "--column", "text=review", "--input", str(tmp_path / "reviews.csv"),
            "--chunk-size", "4", "--keep-columns", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "promptcls", *args, "--output", str(tmp_path / "one.csv")], check=True,
                   env=env, timeout=300)
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))  # the venv's, unactivated
    for suffix in ("csv", "jsonl"):
        done = subprocess.run(
            [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
             "no", "--dynamo_backend", "no", "-m", "promptcls", *args, "--output", str(tmp_path / f"two.{suffix}")],
            env=env, timeout=600, capture_output=True, text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    one = pd.read_csv(tmp_path / "one.csv")
    assert len(one) == len(texts) and one["review"].tolist() == texts
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "two.csv"), one, atol=1e-5)
    pd.testing.assert_frame_equal(pd.read_json(tmp_path / "two.jsonl", lines=True), one, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no part files left


def test_each_cuda_process_selects_its_own_gpu_before_joining_nccl(monkeypatch):
    """Under ``accelerate launch`` on GPUs, rank LOCAL_RANK selects cuda:LOCAL_RANK before NCCL starts (else every
    rank's collectives run on cuda:0). No GPU is needed: torch's CUDA and process-group calls are recorded."""
    import torch
    import torch.distributed as dist

    from promptcls.training import _distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # 2 GPUs per machine: local rank 3 takes cuda:1
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(atexit, "register", lambda f: calls.append(("atexit", f.__name__)))
    assert _distributed() == (3, 4)
    assert calls == [("set_device", 1), ("init", "nccl"), ("atexit", "_leave_process_group")]


LEAVE = textwrap.dedent(
    """
    import atexit, os, sys
    import torch.distributed as dist
    from promptcls.training import _distributed

    # _distributed joins when WORLD_SIZE > 1; this one process joins a group of one
    os.environ.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
    dist.init_process_group = lambda backend, _init=dist.init_process_group: _init(backend, world_size=1, rank=0)
    destroyed = []
    dist.destroy_process_group = lambda _destroy=dist.destroy_process_group: (destroyed.append(1), _destroy())
    # atexit runs last-registered first: this report runs after promptcls's handler
    atexit.register(lambda: print("left" if destroyed and not dist.is_initialized() else "still joined", flush=True))
    assert _distributed() == (0, 1) and dist.is_initialized()
    if sys.argv[2] == "raise":
        raise RuntimeError("boom")
    """
)


def test_the_process_group_promptcls_joined_is_left_at_a_clean_exit(tmp_path):
    """Left to the interpreter's teardown, gloo can abort a finished process (exit -6); promptcls leaves the group
    it joined at exit, except after an uncaught exception (where NCCL's destroy could wait on ranks that died)."""
    import socket

    script = tmp_path / "leave.py"
    script.write_text(LEAVE)
    for how, code, said in (("ok", 0, "left"), ("raise", 1, "still joined")):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        done = subprocess.run([sys.executable, str(script), str(port), how], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == code, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == said
