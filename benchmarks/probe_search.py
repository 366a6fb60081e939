"""Recipe search that fits the shared CPU: a frozen backbone's features, computed once per text, and a linear
Bradley–Terry head fitted on them (the "freeze every layer" end of the freezing lever, where each epoch is free).

    python benchmarks/probe_search.py [--train-pairs 300] [--val-pairs 150]   # → results/probe_search.json

Each row is also appended to results/probe_search_rows.jsonl as soon as it is fitted, so a run stopped part way
keeps what it measured.

Per source (hh, pandalm, alpacaeval), pairs are split by prompt hash exactly as training splits them; a seeded
sample of the train split and of the validation split is embedded with MiniLM under both truncation rules ('left',
'instruction'), reading both poolings (mean of attended tokens; the [CLS] hidden state) from the same forward.
Test splits are not read. For every recipe (pooling × truncation × hard/soft labels) and every training mix, the
head (w ∈ R^384, no bias: a pointwise reward e·w) minimises source-balanced soft-BT loss + λ‖w‖², λ picked on the
training sources' validation pairs; then it reports accuracy with its 95% interval, the length-only baseline and
ρ(reward, length) on each training source's validation pairs and, leave-one-source-out, on the held-out source
(its train + validation samples: it was not trained on).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import time

import numpy as np
import torch
from common import REPO, RESULTS, write_result

SOURCES = {"hh": "data/hh-rlhf-harmless/pairs.jsonl", "pandalm": "data/pandalm/pairs.jsonl",
           "alpacaeval": "data/alpacaeval-gpt4turbo/pairs.jsonl.gz"}
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1)


def sample_pairs(n_train: int, n_val: int) -> dict[str, dict[str, list]]:
    from rmkit.data import read_pairs, split_by_prompt

    out = {}
    for name, path in SOURCES.items():
        train, val, _ = split_by_prompt(read_pairs(REPO / path), 0.1, 0.1, "rmkit")  # the training defaults
        rng = random.Random(0)
        out[name] = {"train": rng.sample(train, min(n_train, len(train))), "val": rng.sample(val, min(n_val, len(val)))}
    return out


def embed(pairs: dict[str, dict[str, list]], truncation: str, max_length: int) -> dict[str, dict[str, dict]]:
    """{source: {split: {"mean": (N, 2, H), "cls": (N, 2, H)}}} for (chosen, rejected) of each pair."""
    from transformers import AutoModel

    from rmkit.backbones import resolve
    from rmkit.encoding import Encoder, pad_sequences, render, token_budget_batches
    from rmkit.model import load_tokenizer

    path = resolve("minilm")
    tokenizer, model = load_tokenizer(path), AutoModel.from_pretrained(path).eval()
    encoder = Encoder(tokenizer, max_length, True, truncation)
    texts = [render(p.prompt, side, tokenizer, "plain") for s in pairs.values() for split in s.values() for p in split
             for side in (p.chosen, p.rejected)]
    ids = encoder.encode(texts)
    mean, cls = np.zeros((len(ids), model.config.hidden_size), np.float32), np.zeros((len(ids), model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for batch in token_budget_batches([len(i) for i in ids], 8192, 64):
            input_ids, mask = pad_sequences([ids[i] for i in batch], tokenizer.pad_token_id)
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (b, T, H)
            m = mask.unsqueeze(-1).float()
            mean[batch] = ((hidden * m).sum(1) / m.sum(1)).numpy()
            cls[batch] = hidden[:, 0].numpy()
    out, k = {}, 0
    for name, splits in pairs.items():
        out[name] = {}
        for split, ps in splits.items():
            n = 2 * len(ps)
            out[name][split] = {"mean": mean[k : k + n].reshape(len(ps), 2, -1), "cls": cls[k : k + n].reshape(len(ps), 2, -1)}
            k += n
    return out


def fit(x: np.ndarray, prob: np.ndarray, lam: float) -> np.ndarray:
    """w minimising mean softBT(x·w, prob) + lam·‖w‖² (L-BFGS); x = e_chosen − e_rejected, (N, H)."""
    from rmkit.loss import soft_bradley_terry_loss

    xt, pt = torch.tensor(x, dtype=torch.float64), torch.tensor(prob)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(len(x), dtype=torch.float64)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = soft_bradley_terry_loss(xt @ w, zero, pt) + lam * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def report(rewards: np.ndarray, pairs: list) -> dict:
    """rewards (N, 2) of (chosen, rejected) → accuracy, interval, length baseline, ρ(reward, length)."""
    from rmkit import metrics
    from rmkit.evaluation import response_length

    delta = rewards[:, 0] - rewards[:, 1]
    correct = int((delta > 0).sum())
    lengths = np.array([[response_length(p.chosen), response_length(p.rejected)] for p in pairs])
    return {"n": len(pairs), "accuracy": round(correct / len(pairs), 4),
            "ci95": [round(v, 4) for v in metrics.wilson_interval(correct, len(pairs))],
            "length_baseline": round(metrics.length_baseline_accuracy(lengths[:, 0], lengths[:, 1], "longer"), 4),
            "rho_reward_length": round(metrics.length_score_correlation(rewards.ravel(), lengths.ravel()), 3)}


def run_recipe(emb, pairs, train_sources, pooling, soft) -> dict:
    """Fit on train_sources' train samples (equal samples per source: balanced), pick λ on their validation samples."""
    xs, probs = [], []
    for s in train_sources:
        e = emb[s]["train"][pooling]
        xs.append(e[:, 0] - e[:, 1])
        p = [q.label_prob if soft and q.label_prob is not None else 1.0 for q in pairs[s]["train"]]
        probs.append(np.array(p))
    x = np.concatenate(xs)
    scale = x.std(0) + 1e-6  # standardise the feature differences so one λ suits every pooling
    best = None
    for lam in LAMBDAS:
        w = fit(x / scale, np.concatenate(probs), lam)
        val = {s: report(emb[s]["val"][pooling] / scale @ w, pairs[s]["val"]) for s in train_sources}
        mean_val = float(np.mean([v["accuracy"] for v in val.values()]))
        if best is None or mean_val > best[0]:
            best = (mean_val, lam, w, val)
    _, lam, w, val = best
    row = {"lambda": lam, "val": val}
    held = [s for s in SOURCES if s not in train_sources]
    for s in held:
        e = np.concatenate([emb[s]["train"][pooling], emb[s]["val"][pooling]])
        row["loso"] = {"source": s, **report(e / scale @ w, pairs[s]["train"] + pairs[s]["val"])}
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-pairs", type=int, default=300)
    p.add_argument("--val-pairs", type=int, default=150)
    p.add_argument("--max-length", type=int, default=224)
    args = p.parse_args()
    started, load = time.perf_counter(), os.getloadavg()[0]
    pairs = sample_pairs(args.train_pairs, args.val_pairs)
    embeddings, embed_s = {}, {}
    for truncation in ("left", "instruction"):
        t0 = time.perf_counter()
        embeddings[truncation] = embed(pairs, truncation, args.max_length)
        embed_s[truncation] = round(time.perf_counter() - t0, 1)
        print(f"embedded with {truncation} truncation in {embed_s[truncation]} s", flush=True)
    mixes = [tuple(SOURCES), *itertools.combinations(SOURCES, 2)]  # all three, then each leave-one-out pair
    rows = []
    for truncation, pooling, soft in itertools.product(("left", "instruction"), ("mean", "cls"), (False, True)):
        for mix in mixes:
            row = {"truncation": truncation, "pooling": pooling, "labels": "soft" if soft else "hard", "train": list(mix),
                   **run_recipe(embeddings[truncation], pairs, mix, pooling, soft)}
            rows.append(row)
            with (RESULTS / "probe_search_rows.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            loso = row.get("loso")
            print(truncation, pooling, row["labels"], "+".join(mix), {s: v["accuracy"] for s, v in row["val"].items()},
                  f"LOSO {loso['source']} {loso['accuracy']} (len {loso['length_baseline']})" if loso else "", flush=True)
    write_result("probe_search", {"args": vars(args), "load_average_at_start": load, "embed_s": embed_s,
                                  "total_s": round(time.perf_counter() - started, 1), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
