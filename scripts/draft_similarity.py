#!/usr/bin/env python3
"""Measures whether the cosine similarity of two drafts' embeddings tells the acceptor anything
that their answers' agreement does not (issue 22 lists it as evidence to consider).

For each pair plan the cascade uses on ZeroEval-12, on the training split only: a logistic head
over the evidence the Rust acceptor already has (answers agree, each has an answer, each
length), with and without the cosine of the two drafts' embeddings, scored by 5-fold
out-of-fold log-loss and AUC; a paired bootstrap of the per-prompt log-loss difference says
whether the cosine's contribution is above noise. Embeddings are the serving encoder's
(models/encoder, mean-pooled, L2-normalised) of each draft's last 1,000 characters, where the
conclusion is. The benchmark's `final_answer` stands in for the extracted answer.

Usage:
    python3 -m venv .cache/expvenv
    .cache/expvenv/bin/pip install numpy pandas pyarrow onnxruntime tokenizers scikit-learn
    .cache/expvenv/bin/python scripts/draft_similarity.py [--data ../shared/data]
"""
import argparse, math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [("deepseek-v2.5-0908", "gpt-4o-mini-2024-07-18"),
         ("gemini-1.5-flash", "deepseek-v2.5-0908"),
         ("deepseek-v2.5-0908", "Qwen2-72B-Instruct")]
TAIL_CHARS = 1000


def embed(session, tokenizer, texts):
    names = {i.name for i in session.get_inputs()}
    out = []
    for i in range(0, len(texts), 32):
        enc = tokenizer.encode_batch(texts[i:i + 32])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(None, feed)[0]
        v = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        out.append(v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12))
    return np.vstack(out)


def oof(X, y, seed):
    p = np.zeros(len(y))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
        p[te] = LogisticRegression(C=1.0, max_iter=2000).fit(X[tr], y[tr]).predict_proba(X[te])[:, 1]
    return np.clip(p, 1e-6, 1 - 1e-6)


def losses(y, p):
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    data = Path(ap.parse_args().data)
    table = pq.read_table(data / "zeroeval.parquet", columns=["prompt_id", "model", "quality", "split"]).to_pandas()
    responses = pq.read_table(data / "zeroeval_responses.parquet").to_pandas()
    quality = table.set_index(["prompt_id", "model"]).quality
    train = set(table[table.split == "train"].prompt_id)
    tokenizer = Tokenizer.from_file(str(ROOT / "models/encoder/tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()
    session = ort.InferenceSession(str(ROOT / "models/encoder/model.onnx"))
    rng = np.random.default_rng(0)
    print("pair | n | log-loss without / with cosine | AUC without / with | with − without (95% bootstrap)")
    for a, b in PAIRS:
        ra = responses[responses.model == a].set_index("prompt_id")
        rb = responses[responses.model == b].set_index("prompt_id")
        ids = sorted(i for i in set(ra.index) & set(rb.index) & train
                     if (i, a) in quality.index and (i, b) in quality.index)
        text_a = [str(ra.response[i]) for i in ids]
        text_b = [str(rb.response[i]) for i in ids]
        cos = (embed(session, tokenizer, [t[-TAIL_CHARS:] for t in text_a])
               * embed(session, tokenizer, [t[-TAIL_CHARS:] for t in text_b])).sum(1)
        fa = [str(ra.final_answer[i] or "") for i in ids]
        fb = [str(rb.final_answer[i] or "") for i in ids]
        base = np.column_stack([
            [1.0 if x and x == y else 0.0 for x, y in zip(fa, fb)],
            [1.0 if x else 0.0 for x in fa], [1.0 if x else 0.0 for x in fb],
            [math.log1p(len(t)) for t in text_a], [math.log1p(len(t)) for t in text_b]])
        y = np.array([1 if quality[(i, a)] >= 0.5 else 0 for i in ids])
        p0, p1 = oof(base, y, 0), oof(np.column_stack([base, cos]), y, 0)
        d = losses(y, p1) - losses(y, p0)
        boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(1000)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        print(f"{a} + {b} | {len(y)} | {losses(y, p0).mean():.4f} / {losses(y, p1).mean():.4f} | "
              f"{roc_auc_score(y, p0):.4f} / {roc_auc_score(y, p1):.4f} | {d.mean():+.4f} ({lo:+.4f} to {hi:+.4f})")


if __name__ == "__main__":
    main()
