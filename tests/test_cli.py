"""The command line, run as users run it: in a subprocess, on a tiny model saved to disk."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from promptcls import PromptClassifier

REVIEWS = pd.DataFrame(
    {
        "review": ["the food was nice", "i hate this place", "fun film", "boring film", "the staff are nice", "awful"],
        "label": [1, 0, 1, 0, 1, 0],
    }
)
VERBALIZER = '{"0": ["bad", "terrible"], "1": ["good", "great"]}'


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, _trainable_bert):
    root = tmp_path_factory.mktemp("cli")
    model, tokenizer = _trainable_bert
    model.save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    REVIEWS.to_csv(root / "reviews.csv", index=False)
    REVIEWS.to_csv(root / "reviews.tsv", sep="\t", index=False)
    REVIEWS.to_json(root / "reviews.jsonl", orient="records", lines=True)
    REVIEWS.to_parquet(root / "reviews.parquet")
    return root


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "promptcls", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def zero_shot(workdir, *extra):
    return ("predict", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", VERBALIZER,
            "--column", "text=review", "--quiet", *extra)


def test_predict_matches_the_python_api(workdir):
    result = run(*zero_shot(workdir, "--input", workdir / "reviews.csv", "--output", workdir / "out.csv"))
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(workdir / "out.csv")
    assert list(out.columns) == ["prediction", "prob_0", "prob_1"]
    clf = PromptClassifier(str(workdir / "tiny"), "{text} It was [MASK].", json.loads(VERBALIZER), columns={"text": "review"})
    proba = clf.fit().predict_proba(REVIEWS)
    np.testing.assert_allclose(out[["prob_0", "prob_1"]].to_numpy(), proba, atol=1e-6)
    assert out.prediction.astype(str).tolist() == [str(c) for c in clf.classes_[proba.argmax(1)]]


@pytest.mark.parametrize("suffix", ["tsv", "jsonl", "parquet"])
def test_input_formats_and_jsonl_output(workdir, suffix):
    result = run(*zero_shot(workdir, "--input", workdir / f"reviews.{suffix}", "--output", workdir / f"out-{suffix}.jsonl",
                            "--keep-columns"))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (workdir / f"out-{suffix}.jsonl").read_text().splitlines()]
    assert len(rows) == len(REVIEWS) and rows[0]["review"] == "the food was nice"
    assert abs(rows[0]["prob_0"] + rows[0]["prob_1"] - 1) < 1e-5


def test_train_evaluate_and_predict_from_the_saved_model(workdir):
    saved = workdir / "saved"
    result = run("train", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", VERBALIZER,
                 "--input", workdir / "reviews.csv", "--column", "text=review", "--mode", "head", "--epochs", "60",
                 "--learning-rate", "0.01", "--train-batch-size", "2", "--output-dir", saved, "--quiet")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in saved.iterdir()) == ["promptcls_config.json", "trained.safetensors"]

    result = run("evaluate", "--saved", saved, "--input", workdir / "reviews.csv", "--column", "text=review",
                 "--json", workdir / "report.json", "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((workdir / "report.json").read_text())
    assert report["accuracy"] == 1.0 and report["confusion_matrix"] == [[3, 0], [0, 3]]
    assert report["macro_f1"] == 1.0 and report["mcc"] == 1.0
    assert "accuracy  1.0000" in result.stdout and "confusion matrix" in result.stdout

    result = run("predict", "--saved", saved, "--input", workdir / "reviews.csv", "--column", "text=review", "--quiet")
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(__import__("io").StringIO(result.stdout)).prediction.tolist() == REVIEWS.label.tolist()


def test_train_with_patience_stops_on_the_dev_file_and_needs_one(workdir):
    base = ["train", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", VERBALIZER,
            "--input", workdir / "reviews.csv", "--column", "text=review", "--mode", "head", "--epochs", "40",
            "--learning-rate", "0.01", "--quiet", "--patience", "1"]
    result = run(*base, "--output-dir", workdir / "no-dev")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "promptcls train: error: --patience stops on the dev accuracy: give a labelled --dev file"
    assert not (workdir / "no-dev").exists()
    result = run(*base, "--dev", workdir / "reviews.csv", "--output-dir", workdir / "patient")
    assert result.returncode == 0, result.stderr
    config = json.loads((workdir / "patient" / "promptcls_config.json").read_text())
    assert config["params"]["early_stopping_patience"] == 1


def test_train_passes_the_head_learning_rate_and_reports_a_bad_one(workdir):
    base = ["train", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", VERBALIZER,
            "--input", workdir / "reviews.csv", "--column", "text=review", "--epochs", "1", "--quiet"]
    result = run(*base, "--mode", "full", "--head-learning-rate", "0.01", "--output-dir", workdir / "head-lr")
    assert result.returncode == 0, result.stderr
    config = json.loads((workdir / "head-lr" / "promptcls_config.json").read_text())
    assert config["params"]["head_learning_rate"] == 0.01
    result = run(*base, "--mode", "prompt", "--head-learning-rate", "0.01", "--output-dir", workdir / "bad")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "head_learning_rate is set but train_mode='prompt' does not train the MLM head" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("--input", "reviews.csv"), "column 'text' for template field 'text' is missing"),
        (("--input", "missing.csv"), "input file 'missing.csv' does not exist"),
        (("--input", "reviews.txt"), "unknown input format 'txt'"),
        (("--input", "garbage.parquet"), "cannot read 'garbage.parquet' as parquet"),
    ],
)
def test_bad_input_exits_with_one_line(workdir, args, message):
    (workdir / "reviews.txt").write_text("hello")
    (workdir / "garbage.parquet").write_text("not parquet")
    base = ["predict", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", VERBALIZER,
            "--quiet"]
    result = run(*base, *args, cwd=workdir)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (("--task", "nosuchtask"), "unknown task 'nosuchtask'; the catalogue has: "),
        (("--template", "{text} It was [MASKS].", "--verbalizer", VERBALIZER), "position 14: unknown slot '[MASKS]'"),
        (("--template", "{text} [MASK]", "--verbalizer", '{"0": ["good"], "1": ["good"]}'), "'good' appears in classes"),
        (("--template", "{text} [MASK]", "--verbalizer", "@nope.json"), "verbalizer file 'nope.json' does not exist"),
    ],
)
def test_bad_prompts_exit_with_one_line(workdir, args, message):
    result = run("predict", "--model", workdir / "tiny", "--input", "reviews.csv", "--column", "text=review", "--quiet",
                 *args, cwd=workdir)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_search_words_writes_a_usable_verbalizer(workdir):
    out = workdir / "words.json"
    result = run("search-words", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--input",
                 workdir / "reviews.csv", "--column", "text=review", "--k", "2", "--output", out, "--quiet")
    assert result.returncode == 0, result.stderr
    found = json.loads(out.read_text())
    assert [c["label"] for c in found["classes"]] == [0, 1] and all(len(c["words"]) == 2 for c in found["classes"])
    result = run(
        "predict", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", f"@{out}",
        "--input", workdir / "reviews.csv", "--column", "text=review", "--quiet")
    assert result.returncode == 0, result.stderr


def test_pet_pipeline_from_the_command_line(workdir):
    patterns = workdir / "patterns.json"
    patterns.write_text(json.dumps([
        {"template": "{text} It was [MASK].", "verbalizer": json.loads(VERBALIZER)},
        {"template": "{text} All in all [MASK].", "verbalizer": {"0": ["poor"], "1": ["nice"]}},
    ]))
    result = run("pet", "--model", workdir / "tiny", "--pattern", f"@{patterns}", "--input", workdir / "reviews.csv",
                 "--unlabeled", workdir / "reviews.csv", "--column", "text=review", "--mode", "head", "--epochs", "2",
                 "--output-dir", workdir / "pet", "--quiet")
    assert result.returncode == 0, result.stderr
    result = run("predict", "--saved", workdir / "pet", "--input", workdir / "reviews.csv", "--column", "text=review",
                 "--quiet")
    assert result.returncode == 0 and len(pd.read_csv(__import__("io").StringIO(result.stdout))) == len(REVIEWS)


def test_catalogue_lists_and_shows(workdir):
    listing = run("catalogue")
    assert listing.returncode == 0 and "sst2" in listing.stdout
    shown = run("catalogue", "sst2")
    assert shown.returncode == 0 and "{text} It was [MASK]." in shown.stdout and "LM-BFF" in shown.stdout
    as_json = json.loads(run("catalogue", "sst2", "--json").stdout)
    assert as_json["verbalizers"]["labels"] == [0, 1]


def test_train_lora_and_prefix_from_the_command_line(workdir):
    base = ["train", "--model", workdir / "tiny", "--template", "[SOFT*2] {text} It was [MASK].", "--verbalizer",
            VERBALIZER, "--input", workdir / "reviews.csv", "--column", "text=review", "--epochs", "1"]
    result = run(*base, "--mode", "lora+prompt", "--lora-rank", "2", "--lora-alpha", "4", "--soft-init", "label-words",
                 "--output-dir", workdir / "lora")
    assert result.returncode == 0, result.stderr
    assert "trained prompt+lora on 6 examples" in result.stderr and "parameters (" in result.stderr
    config = json.loads((workdir / "lora" / "promptcls_config.json").read_text())
    assert config["params"]["train_mode"] == "prompt+lora" and config["params"]["lora_rank"] == 2
    assert config["template"]["soft_init"] == "label-words" and config["parts"]["lora"]["peft"]["r"] == 2
    assert all(".lora_" in n or n.startswith("soft_prompt.") for n in config["trained_parameters"])
    result = run("predict", "--saved", workdir / "lora", "--input", workdir / "reviews.csv", "--column", "text=review",
                 "--quiet")
    assert result.returncode == 0, result.stderr
    result = run(*base, "--mode", "prefix", "--prefix-length", "3", "--prefix-hidden-size", "8", "--quiet",
                 "--output-dir", workdir / "prefix")
    assert result.returncode == 0, result.stderr
    config = json.loads((workdir / "prefix" / "promptcls_config.json").read_text())
    assert config["trained_parameters"] == ["kv_prefix.prefix"] and config["parts"]["prefix"]["shape"][3] == 3
    result = run(*base, "--mode", "lora+ia3", "--output-dir", workdir / "bad")
    assert result.returncode == 2 and "does not compose: LoRA and IA3 would adapt the same layers twice" in result.stderr
    assert not (workdir / "bad").exists()


def test_train_with_class_weights_and_balanced_sampling(workdir):
    base = ["train", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", VERBALIZER,
            "--input", workdir / "reviews.csv", "--column", "text=review", "--epochs", "1", "--quiet"]
    result = run(*base, "--class-weight", '{"0": 2.0}', "--sampling", "balanced", "--output-dir", workdir / "weighted")
    assert result.returncode == 0, result.stderr
    params = json.loads((workdir / "weighted" / "promptcls_config.json").read_text())["params"]
    assert params["class_weight"] == {"0": 2.0} and params["sampling"] == "balanced"
    result = run(*base, "--class-weight", "even", "--output-dir", workdir / "bad-weights")
    assert result.returncode == 2 and "'even' is neither balanced nor a JSON object" in result.stderr


def test_serve_checks_its_tasks_before_loading(workdir):
    result = run("serve")
    assert result.returncode != 0 and "nothing to serve: give --saved DIR" in result.stderr
    result = run("serve", "--saved", workdir / "nowhere")
    assert result.returncode != 0 and "is not a promptcls save: it has no promptcls_config.json" in result.stderr
    result = run("serve", "--zero-shot", "s=sst2")
    assert result.returncode != 0 and "--zero-shot needs --model" in result.stderr
    result = run("serve", "--model", workdir / "tiny", "--zero-shot", "s=nosuchtask")
    assert result.returncode != 0 and "'nosuchtask' is not a catalogue task" in result.stderr
    result = run("serve", "--model", workdir / "tiny", "--zero-shot", "s=sst2", "--threads", "0")
    assert result.returncode != 0 and "--threads must be at least 1, got 0" in result.stderr


def test_predict_rows_of_several_tasks_from_one_file(workdir):
    base = ["train", "--model", workdir / "tiny", "--verbalizer", VERBALIZER, "--input", workdir / "reviews.csv",
            "--column", "text=review", "--epochs", "1", "--quiet"]
    for mode, template in (("prompt", "[SOFT*2] {text} It was [MASK]."), ("head", "{text} All in all [MASK].")):
        result = run(*base, "--mode", mode, "--template", template, "--output-dir", workdir / f"task-{mode}")
        assert result.returncode == 0, result.stderr
    mixed = REVIEWS.assign(task=["soft", "head", "head", "soft", "soft", "head"])
    mixed.to_csv(workdir / "mixed.csv", index=False)
    tasks = ["--saved-task", f"soft={workdir / 'task-prompt'}", "--saved-task", f"head={workdir / 'task-head'}"]
    result = run("predict", *tasks, "--input", workdir / "mixed.csv", "--column", "text=review", "--quiet",
                 "--output", workdir / "mixed.jsonl", "--chunk-size", "4")
    assert result.returncode == 0, result.stderr
    got = pd.read_json(workdir / "mixed.jsonl", lines=True)
    assert got["task"].tolist() == mixed["task"].tolist()
    for task, folder in (("soft", "task-prompt"), ("head", "task-head")):
        clf = PromptClassifier.from_pretrained(workdir / folder, columns={"text": "review"})
        rows = mixed[mixed["task"] == task]
        proba = clf.predict_proba(rows)
        mine = got[got["task"] == task]
        np.testing.assert_allclose([[p[str(c)] for c in clf.classes_] for p in mine["probabilities"]], proba, atol=1e-5)
        assert mine["prediction"].astype(str).tolist() == clf.classes_[proba.argmax(1)].astype(str).tolist()
    mixed.assign(task=["soft", "head", "topic", "soft", "soft", "head"]).to_csv(workdir / "unknown.csv", index=False)
    result = run("predict", *tasks, "--input", workdir / "unknown.csv", "--column", "text=review", "--quiet")
    assert result.returncode != 0 and "row 3: task 'topic' is not one of ['head', 'soft']" in result.stderr
    result = run("predict", *tasks, "--input", workdir / "reviews.csv", "--quiet")
    assert result.returncode != 0 and "has no column 'task' naming each row's task" in result.stderr
    result = run("predict", *tasks, "--saved", workdir / "task-head", "--input", workdir / "mixed.csv")
    assert result.returncode != 0 and "--saved is for one task" in result.stderr


def test_soft_verbalizer_and_long_text_options_from_the_command_line(workdir):
    result = run("train", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", VERBALIZER,
                 "--input", workdir / "reviews.csv", "--column", "text=review", "--epochs", "1", "--quiet",
                 "--mode", "verbalizer", "--output-dir", workdir / "soft-verbalizer")
    assert result.returncode == 0, result.stderr
    config = json.loads((workdir / "soft-verbalizer" / "promptcls_config.json").read_text())
    assert config["trained_parameters"] == ["soft_verbalizer.bias", "soft_verbalizer.vectors"]
    long = pd.DataFrame({"review": [" ".join(["the food was nice"] * 10 + ["awful"])]})
    long.to_csv(workdir / "long.csv", index=False)
    outputs = {}
    for truncation in ("head", "tail", "chunks"):
        result = run("predict", "--saved", workdir / "soft-verbalizer", "--input", workdir / "long.csv", "--column",
                     "text=review", "--max-length", "12", "--truncation", truncation, "--quiet")
        assert result.returncode == 0, result.stderr
        outputs[truncation] = result.stdout
    assert len(set(outputs.values())) == 3  # three readings of one long text
    result = run("predict", "--saved", workdir / "soft-verbalizer", "--input", workdir / "long.csv", "--truncation", "mid")
    assert result.returncode == 2 and "invalid choice: 'mid'" in result.stderr


def test_prototypes_from_the_command_line(workdir):
    base = ["train", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", VERBALIZER,
            "--input", workdir / "reviews.csv", "--column", "text=review", "--epochs", "2", "--quiet", "--mode", "proto"]
    result = run(*base, "--proto-dim", "8", "--output-dir", workdir / "proto")
    assert result.returncode == 0, result.stderr
    config = json.loads((workdir / "proto" / "promptcls_config.json").read_text())
    assert config["trained_parameters"] == ["prototypes.projection.weight", "prototypes.prototypes"]
    assert config["params"]["proto_dim"] == 8
    result = run("predict", "--saved", workdir / "proto", "--input", workdir / "reviews.csv", "--column", "text=review",
                 "--quiet")
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(__import__("io").StringIO(result.stdout))) == len(REVIEWS)
    result = run(*base, "--proto-ensemble", "--output-dir", workdir / "proto-two")
    assert result.returncode != 0 and "with 2 classes each z-score" in result.stderr
    assert not (workdir / "proto-two").exists()


def test_a_knowledgeable_verbalizer_from_the_command_line(workdir):
    words = workdir / "expanded.json"
    result = run("expand-words", "--model", workdir / "tiny", "--verbalizer", '{"0": ["bad"], "1": ["good"]}',
                 "--per-class", "4", "--output", words)
    assert result.returncode == 0, result.stderr
    classes = json.loads(words.read_text())["classes"]
    assert [c["label"] for c in classes] == ["0", "1"] and [len(c["words"]) for c in classes] == [4, 4]
    assert classes[0]["words"][0] == "bad" and classes[1]["words"][0] == "good"
    base = ["predict", "--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", f"@{words}",
            "--column", "text=review", "--input", workdir / "reviews.csv", "--quiet", "--word-calibration"]
    result = run(*base, "--support", workdir / "reviews.csv", "--output", workdir / "kpt.csv")
    assert result.returncode == 0, result.stderr
    clf = PromptClassifier(str(workdir / "tiny"), "{text} It was [MASK].", json.loads(words.read_text()),
                           columns={"text": "review"}, word_calibration=True).fit(REVIEWS)
    out = pd.read_csv(workdir / "kpt.csv")
    np.testing.assert_allclose(out[["prob_0", "prob_1"]].to_numpy(), clf.predict_proba(REVIEWS), atol=1e-6)
    result = run(*base)
    assert result.returncode != 0 and "give them with --support FILE" in result.stderr


def test_regression_from_the_command_line(workdir):
    scores = REVIEWS.assign(label=[4.5, 0.5, 4.0, 1.0, 3.5, 0.0])
    scores.to_csv(workdir / "scores.csv", index=False)
    base = ["--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", '["bad", "good"]',
            "--column", "text=review", "--quiet", "--value-range", "0", "5"]
    result = run("train", *base, "--input", workdir / "scores.csv", "--mode", "head", "--epochs", "3",
                 "--output-dir", workdir / "reg")
    assert result.returncode == 0, result.stderr
    assert "training R\u00b2" in result.stderr
    assert json.loads((workdir / "reg" / "promptcls_config.json").read_text())["estimator"] == "PromptRegressor"
    result = run("predict", "--saved", workdir / "reg", "--input", workdir / "scores.csv", "--column", "text=review",
                 "--quiet")
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(__import__("io").StringIO(result.stdout))
    from promptcls import PromptRegressor

    reg = PromptRegressor.from_pretrained(workdir / "reg", columns={"text": "review"})
    assert list(out.columns) == ["prediction"]
    np.testing.assert_allclose(out.prediction.to_numpy(), reg.predict(scores), atol=1e-5)
    assert ((out.prediction >= 0) & (out.prediction <= 5)).all()
    result = run("evaluate", "--saved", workdir / "reg", "--input", workdir / "scores.csv", "--column",
                 "text=review", "--quiet", "--json", workdir / "reg.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((workdir / "reg.json").read_text())
    assert set(report) == {"examples", "pearson", "spearman", "r2", "mse"} and report["examples"] == 6
    assert report["r2"] == pytest.approx(reg.score(scores, scores.label), abs=1e-5)
    result = run("predict", *base, "--input", workdir / "scores.csv")  # zero-shot regression
    assert result.returncode == 0, result.stderr
    result = run("train", *base, "--input", workdir / "reviews.csv", "--output-dir", workdir / "reg-bad",
                 "--label-column", "review")
    assert result.returncode != 0 and "row 1: label 'the food was nice' in column 'review' is not a number" in result.stderr


def test_demonstrations_from_the_command_line(workdir):
    prompt = ["--model", workdir / "tiny", "--template", "{text} It was [MASK].", "--verbalizer", VERBALIZER,
              "--column", "text=review", "--quiet"]
    result = run("train", *prompt, "--input", workdir / "reviews.csv", "--mode", "head", "--epochs", "1",
                 "--demonstrations", "random", "--output-dir", workdir / "demos")
    assert result.returncode == 0, result.stderr
    config = json.loads((workdir / "demos" / "promptcls_config.json").read_text())
    assert config["params"]["demonstrations"] == "random" and len(config["demonstration_pool"]["rows"]) == 6
    result = run("predict", "--saved", workdir / "demos", "--input", workdir / "reviews.csv", "--column",
                 "text=review", "--quiet", "--demonstration-sets", "2")
    assert result.returncode == 0, result.stderr
    saved = PromptClassifier.from_pretrained(workdir / "demos", columns={"text": "review"}, demonstration_sets=2)
    np.testing.assert_allclose(pd.read_csv(__import__("io").StringIO(result.stdout))[["prob_0", "prob_1"]].to_numpy(),
                               saved.predict_proba(REVIEWS), atol=1e-6)
    # zero-shot in-context: the pool is a labelled file
    result = run("predict", *prompt, "--input", workdir / "reviews.csv", "--demonstrations", "similar",
                 "--demonstration-pool", workdir / "reviews.csv", "--output", workdir / "icl.csv")
    assert result.returncode == 0, result.stderr
    icl = PromptClassifier(str(workdir / "tiny"), "{text} It was [MASK].", json.loads(VERBALIZER),
                           columns={"text": "review"}, demonstrations="similar").fit(REVIEWS[["review"]],
                                                                                    REVIEWS.label.astype(str).tolist())
    np.testing.assert_allclose(pd.read_csv(workdir / "icl.csv")[["prob_0", "prob_1"]].to_numpy(),
                               icl.predict_proba(REVIEWS), atol=1e-6)
    result = run("predict", *prompt, "--input", workdir / "reviews.csv", "--demonstrations", "random")
    assert result.returncode != 0 and "give them with --demonstration-pool FILE" in result.stderr
    result = run("predict", "--saved", workdir / "demos", "--input", workdir / "reviews.csv", "--demonstrations",
                 "random")
    assert result.returncode != 0 and "a --saved model draws from the pool it was saved with" in result.stderr
