"""A save killed at each of its steps leaves the old save or the new one at the path, and it loads.

A child process loads a classifier once, then for each step k forks a writer that saves over the
old save and is killed with SIGKILL (a real kill, no clean-up runs) just before its k-th file-system
operation; the child then reports what the path holds and what loads from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_training import X, Y, make

from promptcls import PromptClassifier

CHILD = textwrap.dedent('''
    import json, os, shutil, signal, sys, time
    import torch
    torch.set_num_threads(1)
    import promptcls.saving as saving
    from promptcls import PromptClassifier

    source, pristine, target, exchange, out = sys.argv[1:6]
    texts = json.loads(sys.argv[6])
    new = PromptClassifier.from_pretrained(source)
    if exchange == "no":  # a file system without renameat2(RENAME_EXCHANGE): the two-rename path
        saving._exchange = lambda a, b: False
    results = []
    for k in range(1, 40):
        shutil.rmtree(target, ignore_errors=True)
        for leftover in os.listdir(os.path.dirname(target)):
            if leftover.startswith("." + os.path.basename(target)):
                shutil.rmtree(os.path.join(os.path.dirname(target), leftover))
        shutil.copytree(pristine, target)
        pid = os.fork()
        if pid == 0:  # the writer: killed before its k-th operation
            calls = [0]
            def step(name, real):
                def wrapped(*a, **kw):
                    calls[0] += 1
                    if calls[0] == k:
                        if name == "save_file":  # die half-way through writing the weights
                            with open(a[1], "wb") as f:
                                f.write(b"partial")
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*a, **kw)
                return wrapped
            saving._write_bytes = step("write", saving._write_bytes)
            saving.save_file = step("save_file", saving.save_file)
            saving._exchange = step("exchange", saving._exchange)
            os.replace = step("replace", os.replace)
            os.mkdir = step("mkdir", os.mkdir)
            os.chmod = step("chmod", os.chmod)
            shutil.rmtree = step("rmtree", shutil.rmtree)
            new.save_pretrained(target)
            os._exit(0)
        deadline = time.time() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = -1
                break
            time.sleep(0.01)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        whole = all(os.path.isfile(os.path.join(target, f)) for f in (saving.CONFIG_NAME, saving.WEIGHTS_NAME))
        loaded = PromptClassifier.from_pretrained(target)  # recovers a save left aside
        results.append({"k": k, "killed": killed, "whole_before_load": whole,
                        "scores": loaded.decision_function(texts).tolist()})
        if not killed:
            break
    json.dump(results, open(out, "w"))
''')


@pytest.fixture(scope="module")
def saves(tmp_path_factory, _trainable_bert):
    root = tmp_path_factory.mktemp("crash")
    model, tokenizer = _trainable_bert
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    old = make((str(root / "base"), None), "head", epochs=1, random_state=0).fit(X, Y)
    new = make((str(root / "base"), None), "head", epochs=5, random_state=1).fit(X, Y)
    old.save_pretrained(root / "old")
    new.save_pretrained(root / "new")
    return root, old.decision_function(X), new.decision_function(X)


@pytest.mark.parametrize("exchange", ["yes", "no"])
def test_a_save_killed_at_any_step_leaves_a_loadable_save(saves, exchange):
    root, old_scores, new_scores = saves
    assert not np.allclose(old_scores, new_scores)
    out = root / f"results-{exchange}.json"
    subprocess.run([sys.executable, "-c", CHILD, str(root / "new"), str(root / "old"), str(root / "target"), exchange,
                    str(out), json.dumps(X)], check=True, timeout=600)
    results = json.loads(out.read_text())
    kills = [r for r in results if r["killed"]]
    assert len(kills) >= 6 and not results[-1]["killed"], results  # every step was killed once, then a clean save
    for r in results:
        scores = np.asarray(r["scores"])
        is_old, is_new = np.allclose(scores, old_scores, atol=1e-6), np.allclose(scores, new_scores, atol=1e-6)
        assert is_old or is_new, f"step {r['k']}: neither the old save nor the new one"
        if exchange == "yes":  # the atomic exchange: the path is never without a whole save
            assert r["whole_before_load"], f"step {r['k']}"
    assert np.allclose(results[-1]["scores"], new_scores, atol=1e-6)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".target")) == []  # leftovers cleaned


def test_a_model_made_from_a_path_records_it(saves):
    root, old_scores, _ = saves
    loaded = PromptClassifier.from_pretrained(root / "old")  # the base model found by its saved path
    np.testing.assert_allclose(loaded.decision_function(X), old_scores, atol=1e-6)
