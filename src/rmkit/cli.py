"""`rmkit` command line: one verb, one library call; argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from rmkit.config import Precision
from rmkit.data import Format
from rmkit.selection import Method

if TYPE_CHECKING:
    from rmkit.scoring import LoadOptions

VERBS: dict[str, Callable[[argparse.Namespace], int]] = {}


def verb(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    VERBS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


@verb
def cmd_train(args: argparse.Namespace) -> int:
    from rmkit.config import load_config
    from rmkit.evaluation import format_by_source, format_summary
    from rmkit.training import train

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *overrides]
    run = train(load_config(config, overrides))
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun the main process reports
        return 0
    report = json.loads((run / "eval.json").read_text())
    for split in ("val", "test"):
        if split in report:
            print(format_summary(f"held-out {split}", report[split]))
            for line in format_by_source(split, report[split]):
                print(line)
    print(f"model: {run / 'model'}   (try: rmkit score {run / 'model'} rows.jsonl --out scored.jsonl)")
    return 0


LOAD_FLAGS = ("device", "dtype", "tokenizer", "batch_tokens", "max_batch")


def load_options(args: argparse.Namespace) -> LoadOptions:
    """The --device/--dtype/--tokenizer/--batch-tokens/--max-batch flags as LoadOptions (defaults where unset)."""
    from rmkit.scoring import LoadOptions

    return LoadOptions(**{k: v for k in LOAD_FLAGS if (v := getattr(args, k)) is not None})


def add_load_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--device", help="'auto' (CUDA when present), 'cpu', 'cuda:1', ...")
    s.add_argument("--dtype", choices=get_args(Precision), help="precision (default fp32; "
                   "auto: bf16 on a GPU that has it; int8: dynamic quantisation, CPU)")
    s.add_argument("--tokenizer", help="a separate tokenizer folder or hub id (default: the model's own)")
    s.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass")
    s.add_argument("--max-batch", type=int, help="most rows per forward pass")


@verb
def cmd_import(args: argparse.Namespace) -> int:
    from rmkit.card import ImportOptions
    from rmkit.model import import_model

    options = ImportOptions(pooling=args.pooling, template=args.template, max_length=args.max_length,
                            reward_label=args.reward_label)
    out = import_model(args.source, args.out, options, tokenizer=args.tokenizer,
                       trust_remote_code=args.trust_remote_code)
    print(f"rmkit model directory: {out}   ({out / 'rmkit.json'}: {(out / 'rmkit.json').read_text().strip()})")
    return 0


@verb
def cmd_eval(args: argparse.Namespace) -> int:
    from rmkit.diagnostics import Flag
    from rmkit.evaluation import compare_models, evaluate_files, format_comparison, format_summary, pair_probabilities, write_json
    from rmkit.modelcard import append_evaluation

    if args.compare:  # rmkit eval --compare MODEL_A MODEL_B DATA [DATA ...]
        if len(args.data) < 2:
            raise SystemExit("rmkit eval --compare: give MODEL_A MODEL_B DATA [DATA ...]")
        if args.report or args.train_data:
            raise SystemExit("rmkit eval --compare: --report and --train-data describe one model; run them without "
                             "--compare")
        report = compare_models(args.model_dir, args.data[0], args.data[1:], format=args.format,
                                options=load_options(args))
        for name, result in report["datasets"].items():
            print(format_comparison(name, result))
    elif args.show_pairs:  # one line per pair: the sanity panel
        report = {path: pair_probabilities(args.model_dir, path) for path in args.data}
        for rows in report.values():
            for row in rows:
                print(f"P(chosen preferred) {row['p_chosen']:.3f}  [{row['subset']}]  {row['prompt'][:70]!r}")
    else:
        report = evaluate_files(args.model_dir, args.data, report_dir=args.report, train_data=args.train_data,
                                format=args.format, options=load_options(args))
        for flag in report["flags"]:
            print(f"  ! {Flag.from_json(flag)}")
        for name, result in report["datasets"].items():
            print(format_summary(name, result))
            for flag in result["flags"]:
                print(f"  ! {Flag.from_json(flag)}")
        if args.report:
            print(f"report: {Path(args.report) / 'report.html'}")
            print(f"model card: {append_evaluation(args.model_dir, report)}")
    if args.out:
        write_json(report, args.out)
        print(f"wrote {args.out}")
    return 0


@verb
def cmd_calibrate(args: argparse.Namespace) -> int:
    from rmkit.calibration import calibrate

    result = calibrate(args.model_dir, args.data)
    for when in ("before", "after"):
        r = result[when]
        print(f"{when}: T={r['temperature']:.3g}  ECE {r['ece']:.4f}  Brier {r['brier']:.4f}  "
              f"log-loss {r['log_loss']:.4f}")
    print(f"wrote T={result['temperature']:.4g} to {Path(args.model_dir) / 'rmkit.json'} (n={result['n_pairs']})")
    return 0


@verb
def cmd_select(args: argparse.Namespace) -> int:
    from rmkit.selection import select

    rows = select([args.model_dir, *args.ensemble], args.pool, args.k, args.out, method=args.method)
    print(f"wrote the {len(rows)} most uncertain pairs to {args.out} for labelling")
    return 0


@verb
def cmd_triage(args: argparse.Namespace) -> int:
    from rmkit.selection import triage

    rows = triage(args.model_dir, args.data, args.out, min_prob=args.min_prob, top=args.top)
    for row in rows[:10]:
        print(f"{row['rank']:>4}  P(rejected preferred) {row['p_model_prefers_rejected']:.3f}  {row['origin']}")
    print(f"wrote {len(rows)} likely mislabelled pairs (P ≥ {args.min_prob:g}) to {args.out}")
    return 0


@verb
def cmd_score(args: argparse.Namespace) -> int:
    from rmkit.ensemble import score_file
    from rmkit.serveconfig import load_serve_config

    flags = [f"{k}={v}" for k in LOAD_FLAGS if (v := getattr(args, k)) is not None]
    cfg = load_serve_config(args.model_dir, [*args.set, *flags])  # a model directory or a serve YAML: same options
    n = score_file(cfg.model_dirs, args.input, args.out, batch_tokens=cfg.batch_tokens, shaping=cfg.shaping,
                   device=cfg.device, max_length=cfg.max_length, max_batch=cfg.max_batch, dtype=cfg.dtype,
                   tokenizer=cfg.tokenizer)
    print(f"scored {n} rows → {args.out}")
    return 0


@verb
def cmd_serve(args: argparse.Namespace) -> int:
    from rmkit.server import load_serve_config, serve

    flags = [f"{k}={v}" for k, v in (("host", args.host), ("port", args.port)) if v is not None]
    serve(load_serve_config(args.source, [*args.overrides, *flags]))
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


def _source(values: list[str]) -> str | list[str]:
    """One --reward/--heldout value, or several (an ensemble)."""
    return values[0] if len(values) == 1 else values


@verb
def cmd_grpo(args: argparse.Namespace) -> int:
    from rmkit.grpo import format_summary, load_grpo_config, run_grpo

    run = run_grpo(load_grpo_config(args.config, args.overrides))
    print(format_summary(run))
    print(f"policy: {run / 'policy'}   metrics: {run / 'metrics.jsonl'}")
    return 0


@verb
def cmd_collect(args: argparse.Namespace) -> int:
    from rmkit.config import parse_overrides
    from rmkit.rollouts import collect

    settings = parse_overrides(args.set)
    if set(settings) - {"shaping"}:
        raise ValueError(f"--set takes shaping.KEY=VALUE only, got {', '.join(sorted(settings))}")
    n = collect(args.prompts, args.policy, _source(args.reward), args.out, n=args.n, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=args.top_p, seed=args.seed, limit=args.limit, device=args.device,
                **settings.get("shaping", {}))
    print(f"wrote {n} rollouts → {args.out}")
    return 0


@verb
def cmd_rerank(args: argparse.Namespace) -> int:
    from rmkit.rollouts import format_rerank, rerank

    report = rerank(args.rollouts, _source(args.reward), _source(args.heldout), out=args.out, device=args.device)
    print(format_rerank(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.report}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rmkit", description="Bradley–Terry reward models from human preference data.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    _data_verbs(sub)
    _scoring_verbs(sub)
    _rl_verbs(sub)
    return p


def _data_verbs(sub: Any) -> None:
    """train, eval, import, calibrate, select, triage."""
    s = sub.add_parser("train", help="train a reward model from a YAML config (defaults: bundled data and backbone)")
    s.add_argument("config", nargs="?", help="YAML config (e.g. configs/default.yaml); omitted = the defaults")
    s.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-5 train.out_dir=runs/x")

    s = sub.add_parser("eval", help="accuracy, calibration and bias diagnostics with flags; --report for HTML")
    s.add_argument("model_dir")
    s.add_argument("data", nargs="+", help="preference or scalar-ratings files (any supported format)")
    s.add_argument("--out", help="write the report as JSON here")
    s.add_argument("--report", metavar="OUT_DIR", help="write report.html (self-contained), report.json and PNG plots, "
                   "and put the results into the model card (MODEL_DIR/README.md)")
    s.add_argument("--compare", action="store_true",
                   help="rmkit eval --compare MODEL_A MODEL_B DATA...: accuracy difference, bootstrap CI, McNemar")
    s.add_argument("--train-data", help="training pairs: their accuracy vs each data set's flags overfitting")
    s.add_argument("--show-pairs", action="store_true",
                   help="print P(chosen preferred) of every pair (a sanity panel such as examples/sanity_panel.jsonl)")
    s.add_argument("--format", default="auto", choices=get_args(Format),
                   help="read every file as this format (default: detect from each row)")
    add_load_flags(s)

    s = sub.add_parser("import", help="read a plain HF reward model (folder or hub id) into an rmkit model directory: "
                                      "writes rmkit.json once, with what its reading rule could not infer")
    s.add_argument("source", help="a *ForSequenceClassification folder or hub id without rmkit.json")
    s.add_argument("out", help="the rmkit model directory to write")
    s.add_argument("--pooling", default="auto", choices=["auto", "last", "mean", "cls"],
                   help="auto: the model's own (encoders: its head on token 0; decoders: the last token)")
    s.add_argument("--template", default="auto", choices=["auto", "chat", "plain"],
                   help="auto: the tokenizer's chat template when it has one, else plain 'Role: content' turns")
    s.add_argument("--max-length", type=int, help="longest token sequence (default: tokenizer and position table)")
    s.add_argument("--reward-label", help="which output is the reward when the model has several (name or index)")
    s.add_argument("--tokenizer", help="a separate tokenizer folder or hub id")
    s.add_argument("--trust-remote-code", action="store_true", help="run the repository's own model code")

    s = sub.add_parser("calibrate", help="fit the temperature of P(A preferred) on validation pairs into rmkit.json")
    s.add_argument("model_dir")
    s.add_argument("data", help="validation preference pairs (not the data you will report on)")

    s = sub.add_parser("select", help="write the k most uncertain unlabelled pairs of a pool for labelling")
    s.add_argument("model_dir")
    s.add_argument("pool", help="JSONL of prompt + response_A + response_B (or chosen/rejected) rows")
    s.add_argument("--k", type=int, required=True, help="how many pairs to select")
    s.add_argument("--out", required=True, help="JSONL to write: the pool rows plus rank, uncertainty, p_A")
    s.add_argument("--ensemble", action="append", default=[], metavar="MODEL_DIR",
                   help="another model (repeat for more): with an ensemble, pairs are ranked by disagreement")
    s.add_argument("--method", default="auto", choices=get_args(Method),
                   help="margin: small |Δ| first; disagreement: ensemble spread (auto: by the number of models)")

    s = sub.add_parser("triage", help="list labelled pairs the model confidently disagrees with (likely label noise)")
    s.add_argument("model_dir")
    s.add_argument("data", help="labelled preference pairs")
    s.add_argument("--out", required=True, help="JSONL to write, most confident disagreement first")
    s.add_argument("--min-prob", type=float, default=0.9, help="least P(rejected preferred) to list (default 0.9)")
    s.add_argument("--top", type=int, help="list at most this many")


def _scoring_verbs(sub: Any) -> None:
    """score, serve, compare, export."""
    s = sub.add_parser("score", help="add shaped 'reward' and 'raw_reward' to each row of a JSONL file "
                                     "(prompt+response, messages or NeMo Gym rollouts)")
    s.add_argument("model_dir", help="rmkit model directory, or a serve YAML (model_dirs, shaping, ...)")
    s.add_argument("input")
    s.add_argument("--out", required=True)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="serve-config override, repeatable: shaping.normalize=none, shaping.clip=null, "
                        "shaping.reward_threshold=0.5, model_dirs=[a,b] (an ensemble), max_length=512")
    add_load_flags(s)

    s = sub.add_parser("serve", help="reward server: rmkit /score, OpenRLHF, NeMo Gym, vLLM, SGLang, LLaMA-Factory")
    s.add_argument("source", help="serve YAML (see rmkit.serveconfig.ServeConfig), an rmkit model directory, or a plain HF "
                                       "reward model folder or hub id")
    s.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. shaping.clip=null max_batch=32 dtype=bf16")
    s.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="TCP port (default 8000)")

    s = sub.add_parser("compare", help="score responses to one prompt and show P(A preferred)")
    s.add_argument("model_dir")
    s.add_argument("--prompt", required=True)
    s.add_argument("--response", action="append", default=[], help="repeat: A, B, ...")

    s = sub.add_parser("export", help="merge a LoRA adapter and its head into a plain HF model")
    s.add_argument("model_dir")
    s.add_argument("--merge", required=True, metavar="OUT_DIR")


def _rl_verbs(sub: Any) -> None:
    """grpo, collect, rerank."""
    s = sub.add_parser("grpo", help="GRPO a policy against a reward model (TRL), in-process or through `rmkit serve`")
    s.add_argument("config", help="YAML GRPO config (e.g. configs/grpo-tiny.yaml; see rmkit.grpo.GrpoConfig)")
    s.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. reward.source=runs/x/model")

    s = sub.add_parser("collect", help="sample N completions per prompt, score them, write NeMo Gym rollout rows")
    s.add_argument("--prompts", required=True, help="JSONL of prompt, messages or responses_create_params rows")
    s.add_argument("--policy", required=True, help="causal LM folder, hub id or alias (smollm2-135m)")
    s.add_argument("--reward", required=True, action="append", help="model directory or server URL; repeat: ensemble")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=4, help="completions per prompt (default 4)")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0, help="prompt i is sampled with seed + i")
    s.add_argument("--limit", type=int, help="use only the first N prompts")
    s.add_argument("--device", default="auto")
    s.add_argument("--set", action="append", default=[], metavar="shaping.KEY=VALUE",
                   help="reward shaping, repeatable: shaping.clip=null, shaping.length_penalty=dapo, ...")

    s = sub.add_parser("rerank", help="best-of-N by reward; gain over a random pick by it and by a held-out model")
    s.add_argument("rollouts", help="rollout rows written by `rmkit collect`")
    s.add_argument("--reward", required=True, action="append", help="the selecting model; repeat: ensemble")
    s.add_argument("--heldout", required=True, action="append", help="a second model that does not select")
    s.add_argument("--out", help="write the picked rollout of each prompt here")
    s.add_argument("--report", help="write the report as JSON here")
    s.add_argument("--device", default="auto")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    # key=value overrides may also come after options (`rmkit serve M --port 1 batch_size=8`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized score head" report is expected here, not news
    try:
        return VERBS[args.verb](args)
    except (ValueError, OSError, RuntimeError) as exc:  # OSError: files, and hub ids that cannot be fetched
        print(f"rmkit {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
