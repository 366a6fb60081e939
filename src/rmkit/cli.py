"""`rmkit` command line: one verb, one library call; argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

VERBS: dict[str, Callable[[argparse.Namespace], int]] = {}


def verb(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    VERBS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


@verb
def cmd_train(args: argparse.Namespace) -> int:
    from rmkit.config import load_config
    from rmkit.evaluation import format_summary
    from rmkit.training import train

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *overrides]
    run = train(load_config(config, overrides))
    report = json.loads((run / "eval.json").read_text())
    for split in ("val", "test"):
        if split in report:
            print(format_summary(f"held-out {split}", report[split]))
    print(f"model: {run / 'model'}   (try: rmkit score {run / 'model'} rows.jsonl --out scored.jsonl)")
    return 0


@verb
def cmd_eval(args: argparse.Namespace) -> int:
    from rmkit.evaluation import evaluate_files, format_summary, write_json

    report = evaluate_files(args.model_dir, args.data)
    for name, result in report["datasets"].items():
        print(format_summary(name, result))
    if args.out:
        write_json(report, args.out)
        print(f"wrote {args.out}")
    return 0


@verb
def cmd_score(args: argparse.Namespace) -> int:
    from rmkit.scoring import score_file

    n = score_file(args.model_dir, args.input, args.out, batch_tokens=args.batch_tokens)
    print(f"scored {n} rows → {args.out}")
    return 0


@verb
def cmd_compare(args: argparse.Namespace) -> int:
    from rmkit.scoring import Scorer, compare

    if len(args.response) < 2:
        raise SystemExit("rmkit compare: give at least two --response")
    result = compare(Scorer.load(args.model_dir), args.prompt, args.response)
    for i, score in enumerate(result["scores"]):
        print(f"response {chr(65 + i)}: reward {score:+.4f}")
    for i, p in enumerate(result["p_first_preferred"], start=1):
        print(f"P(A preferred over {chr(65 + i)}) = {p:.3f}   (σ(Δ/T), T={result['temperature']:.3g})")
    return 0


@verb
def cmd_export(args: argparse.Namespace) -> int:
    from rmkit.model import merge_lora

    print(f"merged model: {merge_lora(args.model_dir, args.merge)}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmkit", description="Bradley–Terry reward models from human preference data.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    s = sub.add_parser("train", help="train a reward model from a YAML config (defaults: bundled data and backbone)")
    s.add_argument("config", nargs="?", help="YAML config (e.g. configs/default.yaml); omitted = the defaults")
    s.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-5 train.out_dir=runs/x")

    s = sub.add_parser("eval", help="accuracy, margins, subsets and the length-only baseline on preference data")
    s.add_argument("model_dir")
    s.add_argument("data", nargs="+", help="preference files (any supported format)")
    s.add_argument("--out", help="write the report as JSON here")

    s = sub.add_parser("score", help="add a 'reward' to each row of a JSONL file (prompt+response or messages)")
    s.add_argument("model_dir")
    s.add_argument("input")
    s.add_argument("--out", required=True)
    s.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per forward pass")

    s = sub.add_parser("compare", help="score responses to one prompt and show P(A preferred)")
    s.add_argument("model_dir")
    s.add_argument("--prompt", required=True)
    s.add_argument("--response", action="append", default=[], help="repeat: A, B, ...")

    s = sub.add_parser("export", help="merge a LoRA adapter and its head into a plain HF model")
    s.add_argument("model_dir")
    s.add_argument("--merge", required=True, metavar="OUT_DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized score head" report is expected here, not news
    try:
        return VERBS[args.verb](args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"rmkit {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
