"""The command line as a new user meets it: defaults shown, a fast start, checks before the model loads,
files as people have them (no header, ragged lines), honest messages, and no partial output."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from promptcls import cli
from promptcls.defaults import EPOCHS, LEARNING_RATES, TRAIN_BATCH_SIZE

REVIEWS = pd.DataFrame(
    {
        "label": [1, 0, 1, 0, 1, 0],
        "review": ["the food was nice", "i hate this place", "fun film", "boring film", "the staff are nice", "awful"],
    }
)
VERBALIZER = '{"0": ["bad", "terrible"], "1": ["good", "great"]}'
TEMPLATE = "{text} It was [MASK]."


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, _trainable_bert):
    root = tmp_path_factory.mktemp("cli-first-use")
    model, tokenizer = _trainable_bert
    model.save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    model.bert.save_pretrained(root / "headless")  # the encoder alone: its MLM head starts at random
    tokenizer.save_pretrained(root / "headless")
    REVIEWS.to_csv(root / "reviews.csv", index=False)
    REVIEWS.to_csv(root / "headerless.csv", index=False, header=False)
    REVIEWS.to_json(root / "reviews.jsonl", orient="records", lines=True)
    REVIEWS.to_parquet(root / "reviews.parquet", row_group_size=4)
    return root


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "promptcls", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def python(code: str, cwd=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


def predict(workdir, *extra, model="tiny"):
    return ("predict", "--model", workdir / model, "--template", TEMPLATE, "--verbalizer", VERBALIZER, "--quiet", *extra)


def one_line_error(result) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------------- help and start-up
def test_train_help_shows_every_default_and_an_example():
    result = run("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert f"passes over the training file (default: {EPOCHS})" in text
    assert f"examples per training step (default: {TRAIN_BATCH_SIZE})" in text
    assert "(head+prompt, prompt+verbalizer, prompt+proto, head+lora, prompt+lora, ...) (default: head)" in text and "random seed (weights, order, dropout) (default: 0)" in text
    head, full = LEARNING_RATES["head"][0], LEARNING_RATES["full"][0]
    assert f"(default per --mode: head {head:g}, head+prompt" in text and f"full {full:g})" in text
    assert "examples: promptcls train --model roberta-base" in text
    assert "(zero-shot)" not in text  # --calibrate applies to trained models too
    assert "of the trained model's class scores" in text


@pytest.mark.parametrize("command", ["predict", "train", "evaluate", "pet", "search-words", "catalogue"])
def test_every_command_help_has_defaults_and_examples(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction)).choices[command]
    text = sub.format_help()
    assert f"examples:\n  promptcls {command}" in text or f"examples:\n  promptcls {command.split()[0]}" in text
    for action in sub._actions:
        # every option with a value of its own says its default (or how the default is chosen)
        if action.option_strings and action.default not in (None, False, "==SUPPRESS==") and action.help:
            assert "(default" in sub._get_formatter()._get_help_string(action), action.option_strings


def test_version_and_help_do_not_import_torch():
    code = (
        "import sys\n"
        "from promptcls.cli import main\n"
        "for argv in (['--version'], ['--help'], ['train', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'sklearn') if m in sys.modules))\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "promptcls 0.1.0" in result.stdout


def test_the_package_imports_lazily_and_still_exports_its_names():
    code = (
        "import sys, promptcls\n"
        "print('torch' in sys.modules)\n"
        "from promptcls import PromptClassifier, Template, load_template\n"
        "print(PromptClassifier.__module__, Template.__module__, 'torch' in sys.modules)\n"
        "print(all(hasattr(promptcls, n) for n in promptcls.__all__))\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["False", "promptcls.estimator promptcls.template True", "True"]


# ---------------------------------------------------------------------- checks before any model loads
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--column", "text=nope"], "column 'nope' for template field 'text' is missing from"),
        (["--column", "txt=review"], "--column maps field 'txt', which the template does not have"),
        (["--column", "text=review", "--label-column", "stars"], "label column 'stars' is missing from"),
    ],
)
def test_bad_columns_fail_before_the_model_loads(workdir, argv, message):
    # the model path does not exist: the column error must come first, and transformers never be imported
    code = (
        "import sys\n"
        "from promptcls.cli import main\n"
        f"rc = main(['train', '--model', '/nonexistent/model', '--template', {TEMPLATE!r}, '--verbalizer', {VERBALIZER!r},"
        f" '--input', 'reviews.csv', '--output-dir', 'out', *{argv!r}])\n"
        "print(rc, 'transformers' in sys.modules, 'torch' in sys.modules)\n"
    )
    result = python(code, cwd=workdir)
    assert result.stdout.split() == ["1", "False", "False"], result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (workdir / "out").exists()


def test_unknown_labels_fail_before_the_model_loads(workdir):
    (workdir / "stars.csv").write_text("review,label\ngood film,5\nbad film,4\n")
    result = run("train", "--model", "/nonexistent/model", "--task", "sst2", "--input", "stars.csv",
                 "--column", "text=review", "--output-dir", "out", cwd=workdir)
    assert "labels ['4', '5'] in column 'label' of 'stars.csv' are not verbalizer classes ['0', '1']" in one_line_error(result)


def test_a_missing_model_path_is_named(workdir):
    line = one_line_error(run(*predict(workdir, "--input", workdir / "reviews.csv", "--column", "text=review",
                                      model="no/such/model/dir")))
    assert "model path" in line and "does not exist" in line
    line = one_line_error(run("predict", "--model", "/nonexistent/path", "--task", "sst2", "--input",
                              workdir / "reviews.csv", "--column", "text=review"))
    assert line == ("promptcls predict: error: model path '/nonexistent/path' does not exist: give a local model "
                    "folder or a hub id such as roberta-base")


def test_a_bad_device_is_one_line_with_the_choices(workdir):
    line = one_line_error(run(*predict(workdir, "--input", workdir / "reviews.csv", "--column", "text=review",
                                      "--device", "bogus")))
    assert line == "promptcls predict: error: --device 'bogus' is not one of auto, cpu, cuda, cuda:N, mps"


def test_an_output_dir_that_is_not_a_save_fails_before_training(workdir):
    (workdir / "taken").mkdir(exist_ok=True)
    (workdir / "taken" / "notes.txt").write_text("mine")
    result = run("train", "--model", "/nonexistent/model", "--template", TEMPLATE, "--verbalizer", VERBALIZER,
                 "--input", workdir / "reviews.csv", "--column", "text=review", "--output-dir", workdir / "taken")
    assert "exists and is not a promptcls save" in one_line_error(result)
    assert (workdir / "taken" / "notes.txt").read_text() == "mine"


def test_max_length_beyond_the_model_is_one_line(workdir):
    line = one_line_error(run(*predict(workdir, "--input", workdir / "reviews.csv", "--column", "text=review",
                                      "--max-length", "100000")))
    assert "100000" in line


# ---------------------------------------------------------------------- files as people have them
def test_headerless_files_read_with_names(workdir):
    with_header = run(*predict(workdir, "--input", workdir / "reviews.csv", "--column", "text=review"))
    headerless = run(*predict(workdir, "--input", workdir / "headerless.csv", "--no-header", "--names", "label,text"))
    assert with_header.returncode == 0 and headerless.returncode == 0, headerless.stderr
    a, b = pd.read_csv(io.StringIO(with_header.stdout)), pd.read_csv(io.StringIO(headerless.stdout))
    assert len(b) == len(REVIEWS)  # the first line is a row, not a header
    pd.testing.assert_frame_equal(a, b)


def test_a_header_that_looks_like_data_warns(workdir):
    result = run("train", "--model", "/nonexistent/model", "--template", TEMPLATE, "--verbalizer", VERBALIZER,
                 "--input", workdir / "headerless.csv", "--output-dir", workdir / "never")
    warning, error = result.stderr.strip().splitlines()
    assert "warning: the first line of" in warning and "looks like data, not a header" in warning
    assert "'1' is a label" in warning and warning.endswith("use --no-header --names label,text")
    assert "label column 'label' is missing" in error and result.returncode == 1
    clean = run(*predict(workdir, "--input", workdir / "reviews.csv", "--column", "text=review"))
    assert clean.returncode == 0 and "warning" not in clean.stderr


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("names.csv", "1,fine\n0,bad,film\n", "--names gives 3 names but line 1 of"),
        ("only.csv", "label,text\n1,fine\n", "--no-header needs the column names: --names label,text"),
    ],
)
def test_headerless_options_are_checked(workdir, name, content, message):
    (workdir / name).write_text(content)
    extra = ["--no-header", "--names", "label,text,extra"] if name == "names.csv" else ["--no-header"]
    result = run(*predict(workdir, "--input", workdir / name, *extra))
    assert message in one_line_error(result)


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("ragged.tsv", "review\tlabel\nfun film\t1\nboring\tfilm\t0\nnice\t1\n", 3),
        ("ragged.csv", "review,label\nfun film,1\n\"a, quoted\",0\nboring, film,0\n", 4),
        ("short.tsv", "review\tlabel\nfun film\t1\nboring film\n", 3),
    ],
)
def test_ragged_lines_are_named(workdir, name, content, line):
    (workdir / name).write_text(content)
    result = run(*predict(workdir, "--input", workdir / name, "--column", "text=review"))
    message = one_line_error(result)
    assert f"line {line} of" in message and "fields but the header has 2" in message


# ---------------------------------------------------------------------- training feedback and honest notes
def test_train_with_dev_reports_the_kept_epoch(workdir):
    result = run("train", "--model", workdir / "tiny", "--template", TEMPLATE, "--verbalizer", VERBALIZER,
                 "--input", workdir / "reviews.csv", "--dev", workdir / "reviews.csv", "--column", "text=review",
                 "--epochs", "6", "--learning-rate", "0.01", "--train-batch-size", "2", "--output-dir",
                 workdir / "dev-run", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert "best dev accuracy " in summary and " of 6, kept" in summary and "(6 epochs)" not in summary
    epoch = int(summary.split(" at epoch ")[1].split()[0])
    accuracy = float(summary.split("best dev accuracy ")[1].split()[0])
    assert 1 <= epoch <= 6 and 0.0 <= accuracy <= 1.0


def test_best_dev_epoch_reads_history_when_the_classifier_has_no_attribute():
    class Fitted:
        history_ = [{"epoch": 1, "eval_accuracy": 0.5}, {"epoch": 2, "eval_accuracy": 0.75},
                    {"epoch": 3, "eval_accuracy": 0.75}]

    assert cli.best_dev_epoch(Fitted()) == (2, 0.75)  # the first best epoch, as training keeps it
    Fitted.best_epoch_, Fitted.best_dev_accuracy_ = 3, 0.8
    assert cli.best_dev_epoch(Fitted()) == (3, 0.8)


def test_an_untrained_head_is_said_plainly_per_command(workdir):
    base = ["--template", TEMPLATE, "--input", workdir / "reviews.csv", "--column", "text=review", "--quiet"]
    words = run("search-words", "--model", workdir / "headless", *base, "--k", "1")
    assert words.returncode == 0, words.stderr
    assert "has no pretrained MLM head" in words.stderr and "the words found mean nothing" in words.stderr
    zero = run("predict", "--model", workdir / "headless", *base, "--verbalizer", VERBALIZER)
    assert zero.returncode == 0 and "zero-shot scores mean nothing" in zero.stderr
    for result in (words, zero):  # one note, the command's own: not the library's as well
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "saved with the classifier" not in result.stderr and "initialised randomly" not in result.stderr

    trained = run("train", "--model", workdir / "headless", *base, "--verbalizer", VERBALIZER, "--epochs", "1",
                  "--output-dir", workdir / "headless-save")
    assert trained.returncode == 0, trained.stderr
    assert "head mode trains them, and the save keeps them" in trained.stderr
    loaded = run("predict", "--saved", workdir / "headless-save", "--input", workdir / "reviews.csv", "--quiet")
    assert loaded.returncode == 0, loaded.stderr
    assert "MLM head" not in loaded.stderr and "initialised" not in loaded.stderr


def test_predict_from_a_save_applies_max_length_and_calibration(workdir):
    saved = workdir / "saved"
    result = run("train", "--model", workdir / "tiny", "--template", TEMPLATE, "--verbalizer", VERBALIZER,
                 "--input", workdir / "reviews.csv", "--column", "text=review", "--epochs", "20",
                 "--train-batch-size", "2", "--output-dir", saved, "--quiet")
    assert result.returncode == 0, result.stderr

    def proba(*extra):
        out = run("predict", "--saved", saved, "--input", workdir / "reviews.csv", "--quiet", *extra)
        assert out.returncode == 0, out.stderr
        return pd.read_csv(io.StringIO(out.stdout))[["prob_0", "prob_1"]].to_numpy()

    plain = proba()
    assert abs(proba("--max-length", "8") - plain).max() > 1e-4
    assert abs(proba("--calibrate") - plain).max() > 1e-4


# ---------------------------------------------------------------------- input edits
def test_apply_edits_scores_the_edited_text(workdir):
    pairs = pd.DataFrame({"premise": ["the film was fun.", "i hate this place!"],
                          "hypothesis": ["It was good.", "It was great."], "label": ["entailment", "neutral"]})
    pairs.to_csv(workdir / "pairs.csv", index=False)
    edited = pairs.assign(premise=["the film was fun", "i hate this place"], hypothesis=["it was good.", "it was great."])
    edited.to_csv(workdir / "edited.csv", index=False)
    common = ["predict", "--model", workdir / "tiny", "--task", "snli", "--quiet"]
    with_edits = run(*common, "--input", workdir / "pairs.csv", "--apply-edits")
    by_hand = run(*common, "--input", workdir / "edited.csv")
    without = run(*common, "--input", workdir / "pairs.csv")
    assert with_edits.returncode == 0 and by_hand.returncode == 0 and without.returncode == 0, with_edits.stderr
    assert with_edits.stdout == by_hand.stdout != without.stdout
    line = one_line_error(run(*predict(workdir, "--input", workdir / "reviews.csv", "--apply-edits")))
    assert "--apply-edits applies the text edits of a catalogue template: give --task NAME" in line


# ---------------------------------------------------------------------- interrupted writes
def test_an_interrupted_write_leaves_no_output(workdir, monkeypatch, capsys):
    """Ctrl-C after the first chunk was written: neither the output nor its temporary file is left."""
    from promptcls import PromptClassifier

    target = workdir / "interrupted" / "preds.csv"
    target.parent.mkdir()
    real, calls = PromptClassifier.predict_proba, []

    def second_chunk_interrupted(self, X):
        calls.append(len(X))
        if len(calls) == 2:
            assert any(p.name.endswith(".part") and p.stat().st_size > 0 for p in target.parent.iterdir())
            raise KeyboardInterrupt
        return real(self, X)

    monkeypatch.setattr(PromptClassifier, "predict_proba", second_chunk_interrupted)
    rc = cli.main(["predict", "--model", str(workdir / "tiny"), "--template", TEMPLATE, "--verbalizer", VERBALIZER,
                   "--input", str(workdir / "reviews.csv"), "--column", "text=review", "--output", str(target),
                   "--quiet", "--chunk-size", "2"])
    assert rc == 130 and calls == [2, 2]
    assert capsys.readouterr().err.strip().endswith("promptcls predict: interrupted: no output written")
    assert list(target.parent.iterdir()) == []  # neither the output nor its temporary file


def test_predict_streams_chunks_into_one_output(workdir):
    import pandas as pd

    from promptcls import PromptClassifier

    for suffix in ("csv", "jsonl", "parquet"):
        out = workdir / f"chunked-{suffix}.jsonl"
        rc = cli.main(["predict", "--model", str(workdir / "tiny"), "--template", TEMPLATE, "--verbalizer", VERBALIZER,
                       "--input", str(workdir / f"reviews.{suffix}"), "--column", "text=review", "--output", str(out),
                       "--quiet", "--chunk-size", "4", "--keep-columns"])
        assert rc == 0
        rows = pd.read_json(out, lines=True)
        whole = pd.read_csv(workdir / "reviews.csv")
        assert rows["review"].tolist() == whole["review"].tolist()
        clf = PromptClassifier(str(workdir / "tiny"), TEMPLATE, json.loads(VERBALIZER), columns={"text": "review"}).fit()
        np.testing.assert_allclose(rows[[c for c in rows if c.startswith("prob_")]].to_numpy(),
                                   clf.predict_proba(whole), atol=1e-6)


def test_an_earlier_output_survives_an_interrupted_rewrite(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), cli.atomic_path(target) as staging:
        staging.write_text("new, half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    cli.write_text("new", str(target))
    assert target.read_text() == "new"


def test_pet_takes_the_variants_over_the_task_fields_and_shared_edits():
    parser = cli.build_parser()
    args = parser.parse_args(["pet", "--task", "yahoo", "--input", "x.csv", "--unlabeled", "u.csv", "--output-dir", "o"])
    patterns, edits = cli._patterns(args)
    assert len(patterns) == 10 and edits == {}  # the -question variants are for titles-only data
    args = parser.parse_args(["pet", "--task", "yahoo", "--variants", "pet-0-question", "pet-1-question", "--input",
                              "x.csv", "--unlabeled", "u.csv", "--output-dir", "o"])
    assert [t.fields for t, _ in cli._patterns(args)[0]] == [("question",), ("question",)]
    args = parser.parse_args(["pet", "--task", "rte", "--variants", "lmbff", "pet-0", "--apply-edits", "--input",
                              "x.csv", "--unlabeled", "u.csv", "--output-dir", "o"])
    with pytest.raises(cli.CLIError, match="edit the input differently"):
        cli._patterns(args)
