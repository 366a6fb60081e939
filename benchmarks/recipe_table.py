"""Markdown tables of the recipe-search rows (benchmarks/results/recipe_search.jsonl), for RESULTS.md.

    python benchmarks/recipe_table.py [NAME_PREFIX ...]          validation and leave-one-source-out cells
    python benchmarks/recipe_table.py --test [NAME_PREFIX ...]   per-source *test* cells from each run's eval.json

A cell is accuracy (95% Wilson interval) / length-only baseline ("the longer answer wins") on the same pairs. Rows
are the runs whose name starts with one of the prefixes (all runs without one), in the order they ran.
"""

from __future__ import annotations

import argparse
import json

from common import REPO, RESULTS

SOURCES = ("hh", "pandalm", "alpacaeval")
TEST_NAMES = {"hh-rlhf-harmless": "hh", "pandalm": "pandalm", "alpacaeval-gpt4turbo": "alpacaeval"}


def cell(m: dict | None) -> str:
    if not m:
        return "—"
    low, high = m["ci95"]
    return f"{m['accuracy']:.3f} ({low:.3f}–{high:.3f}) / {m['length_baseline']:.3f}"


def rows(prefixes: list[str]) -> list[dict]:
    lines = (RESULTS / "recipe_search.jsonl").read_text().splitlines()
    found = [json.loads(line) for line in lines if line.strip()]
    return [r for r in found if not prefixes or any(r["name"].startswith(p) for p in prefixes)]


def search_table(runs: list[dict]) -> list[str]:
    out = ["| run | overrides | trained on | train min | " + " | ".join(f"val {s}" for s in SOURCES)
           + " | LOSO (held-out source) | ρ(reward, length) on LOSO |", "|" + "---|" * (6 + len(SOURCES))]
    for r in runs:
        loso = r.get("loso")
        held = f"{r['heldout']}: {cell(loso)}" if loso else "—"
        out.append(f"| {r['name']} | `{' '.join(r['overrides'])}` | {'+'.join(r['train_sources'])} | "
                   f"{r['train_s'] / 60:.1f} | " + " | ".join(cell(r['val'].get(s)) for s in SOURCES)
                   + f" | {held} | {loso['rho_reward_length'] if loso else '—'} |")
    return out


def test_cell(report: dict) -> str:
    low, high = report["accuracy_ci95"]
    return f"{report['accuracy']:.3f} ({low:.3f}–{high:.3f}) / {report['length_baseline_accuracy']:.3f}"


def test_table(runs: list[dict]) -> list[str]:
    out = ["| run | overrides | " + " | ".join(f"test {s}" for s in SOURCES) + " | test overall | ρ(reward, length) |",
           "|" + "---|" * (4 + len(SOURCES))]
    for r in runs:
        test = json.loads((REPO / "runs" / "recipe_search" / r["name"] / "eval.json").read_text())["test"]
        by = {TEST_NAMES.get(k, k): v for k, v in test.get("by_source", {}).items()}
        out.append(f"| {r['name']} | `{' '.join(r['overrides'])}` | "
                   + " | ".join(test_cell(by[s]) if s in by else "—" for s in SOURCES)
                   + f" | {test_cell(test)} | {test['length_score_spearman']:.3f} |")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefixes", nargs="*")
    p.add_argument("--test", action="store_true")
    args = p.parse_args()
    runs = rows(args.prefixes)
    print("\n".join(test_table(runs) if args.test else search_table(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
