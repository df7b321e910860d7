"""``promptcls predict`` over inputs of growing size: peak memory stays flat, throughput stays put.

A tiny random BERT (2 layers, hidden 32, a WordPiece vocabulary written here) is saved to a temporary
folder; CSV files of 10k, 100k and 1M short reviews are scored by ``promptcls predict`` in a fresh
process each (``--chunk-size 1000``, output to CSV). Peak RSS is the child's ``ru_maxrss``; rows/s is
the rows over the wall time of the whole command (start-up and model load included).

Run (from the repository root)::

    python benchmarks/predict_memory.py                 # 10k, 100k, 1M rows
    python benchmarks/predict_memory.py --rows 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SENTENCES = ["the food was great", "it was terrible and really awful and boring", "nice staff", "a fun film",
             "the service was poor and the price was not cheap", "i love this place", "bad"]


def tiny_model(folder: Path) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in SENTENCES for w in s.split()} | {"good", "bad", "it", "was"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "."]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = Tokenizer(models.WordPiece.from_file(str(folder / "vocab.txt"), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=128)
    transformers.AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
    fast.save_pretrained(folder)


def run_one(model: Path, rows: int, work: Path, threads: int) -> dict:
    data = work / f"in-{rows}.csv"
    with data.open("w") as f:
        f.write("text\n")
        for i in range(rows):
            f.write(SENTENCES[i % len(SENTENCES)] + "\n")
    out = work / f"out-{rows}.csv"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "promptcls", "predict", "--model", str(model), "--template",
                             "{text} It was [MASK].", "--verbalizer", '{"neg": ["bad"], "pos": ["good"]}', "--input",
                             str(data), "--output", str(out), "--quiet", "--chunk-size", "1000", "--batch-size", "64"],
                            env=env, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - start
    if status != 0:
        raise RuntimeError(proc.stderr.read())
    lines = sum(1 for _ in out.open()) - 1
    assert lines == rows, (lines, rows)
    data.unlink()
    out.unlink()
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "predict_memory"))
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "tiny"
        model.mkdir()
        tiny_model(model)
        for rows in args.rows:
            results.append(run_one(model, rows, work, args.threads))
            print(json.dumps(results[-1]), flush=True)
    lines = ["# `promptcls predict` memory and throughput by input size", "",
             f"Command: `python benchmarks/predict_memory.py --rows {' '.join(map(str, args.rows))} --threads "
             f"{args.threads}` ({platform.machine()}, {args.threads} thread(s)). A tiny random BERT (2 layers, hidden 32); "
             "short reviews; `--chunk-size 1000`; each size in a fresh process. Peak RSS: the process's maximum "
             "resident set; rows/s over the whole command (start-up and model load included).", "",
             "| rows | seconds | rows/s | peak RSS (MB) |", "|---|---|---|---|"]
    lines += [f"| {r['rows']:,} | {r['seconds']} | {r['rows_per_s']:,.0f} | {r['peak_rss_mb']} |" for r in results]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    Path(f"{args.out}.json").write_text(json.dumps(results, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r["rows"] for r in results], [r["peak_rss_mb"] for r in results], "o-")
        ax.set_xscale("log")
        ax.set_ylim(0, max(r["peak_rss_mb"] for r in results) * 1.3)
        ax.set_xlabel("input rows")
        ax.set_ylabel("peak RSS (MB)")
        ax.set_title("promptcls predict, --chunk-size 1000")
        fig.tight_layout()
        fig.savefig(f"{args.out}.png", dpi=120)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
