"""The model directory's README.md, in the Hugging Face model-card layout: YAML front matter (library, base model,
pipeline tag, licence of the training data), what the model is, how it was trained (data with counts, recipe, wall
time, hardware), held-out results per source with 95% intervals beside the length-only baseline, the diagnostics'
flags, the calibration temperature, how to load it in plain transformers and in rmkit, and its known limits.

`rmkit train` writes it from the same report dict it writes eval.json from (so the numbers agree); `rmkit eval
--report` replaces the card's evaluation section with its own results. Knows report dicts, configs and files;
knows nothing of tensors, training loops or HTTP.
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from rmkit import __version__
from rmkit.backbones import hub_id
from rmkit.config import TrainConfig, dump_config
from rmkit.evaluation import dataset_names
from rmkit.model import ModelCard, read_card

CARD_NAME = "README.md"
EVAL_START, EVAL_END = "<!-- rmkit eval: start -->", "<!-- rmkit eval: end -->"
LICENCES = (("MIT License", "mit"), ("Apache License", "apache-2.0"), ("Creative Commons Attribution 4.0", "cc-by-4.0"))
"""First words of a LICENSE file → the hub's licence id."""


def data_licence(path: str | Path) -> str:
    """Licence id of a data file, read from the LICENSE beside it: 'mit', 'apache-2.0', ..., else 'unknown'."""
    licence = Path(path).parent / "LICENSE"
    if not licence.is_file():
        return "unknown"
    head = licence.read_text(errors="replace")[:2000]
    return next((hub for words, hub in LICENCES if words in head), "unknown")


def hardware(world_size: int = 1) -> str:
    """What trained the model: GPU names, or the CPU model with its core count and torch threads."""
    import torch

    if torch.cuda.is_available():
        return f"{world_size} × {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    procs = f"{world_size} processes, " if world_size > 1 else ""
    return f"CPU: {cpu}, {os.cpu_count()} cores ({procs}{torch.get_num_threads()} torch threads)"


def run_summary(cfg: TrainConfig, splits: dict[str, list[Any]], wall_time_s: float, steps: int,
                world_size: int = 1) -> dict[str, Any]:
    """The run facts eval.json and the card share: wall time, hardware, steps and pairs per source and split.

    Example: {"wall_time_s": 61.2, "hardware": "CPU: ...", "steps": 8, "sources": {"pandalm": {"path": ...,
    "licence": "apache-2.0", "train": 64, "val": 80, "test": 92}}}. Train counts are after source balancing.
    """
    files = list(cfg.data.paths)
    counts = {split: Counter(str(p.origin).split(",")[0].rsplit(":", 1)[0] for p in pairs)
              for split, pairs in splits.items()}
    sources = {name: {"path": path, "licence": data_licence(path), **{s: counts[s][path] for s in counts}}
               for name, path in zip(dataset_names(files), files, strict=True)}
    return {"wall_time_s": round(wall_time_s, 1), "hardware": hardware(world_size), "steps": steps,
            "sources": sources}


def front_matter(card: ModelCard, licences: list[str]) -> str:
    distinct = sorted(set(licences))
    lines = ["---", f"library_name: {'peft' if card.finetune == 'lora' else 'transformers'}"]
    base = hub_id(card.backbone)
    if base:
        lines.append(f"base_model: {base}")
    lines.append("pipeline_tag: text-classification")
    if len(distinct) == 1 and distinct[0] != "unknown":
        lines.append(f"license: {distinct[0]}")
    else:  # the hub takes one id; several (or unknown) licences are spelled out in the card's text
        lines += ["license: other", f"license_name: {'-and-'.join(distinct) if distinct else 'unknown'}"]
    lines += ["tags:", "- reward-model", "- bradley-terry", "- rmkit", "---", ""]
    return "\n".join(lines)


def what_it_is(name: str, card: ModelCard) -> str:
    base = hub_id(card.backbone) or card.backbone
    finetune = "a LoRA adapter plus the score head" if card.finetune == "lora" else "every weight fine-tuned"
    return (f"# {name} (rmkit reward model)\n\nA Bradley–Terry **reward model** trained with rmkit {card.rmkit_version}: "
            "given a prompt and a response it returns one scalar reward (higher is better; only differences between responses to the same "
            f"prompt carry meaning). Backbone `{base}` ({finetune}); the reward is read with `{card.pooling}` pooling "
            f"from the text rendered with the `{card.template}` template, at most {card.max_length} tokens (longer "
            "texts lose tokens from the start of the prompt).\n")


def training_section(cfg: TrainConfig, report: dict[str, Any]) -> str:
    run = report.get("run", {})
    rows = ["| source | licence | train pairs | val pairs | test pairs |", "|---|---|---:|---:|---:|"]
    for name, s in run.get("sources", {}).items():
        rows.append(f"| {name} (`{s['path']}`) | {s['licence']} | {s.get('train', 0)} | {s.get('val', 0)} | "
                    f"{s.get('test', 0)} |")
    tc, oc, dropped = cfg.train, cfg.optim, report.get("dropped_identical_after_truncation", {})
    length = "epochs" if tc.max_steps is None else "max_steps"
    recipe = (f"Bradley–Terry loss on {cfg.model.finetune} fine-tuning of `{cfg.model.path}`, lr {oc.lr:g} (head "
              f"{oc.head_lr or oc.lr:g}), batch {tc.batch_size} × {tc.grad_accum} accumulation, {length} "
              f"{getattr(tc, length)}, {run.get('steps', '?')} optimiser steps, length decorrelation "
              f"{tc.length_decorrelation:g}, seed {tc.seed}; sources balanced: {cfg.data.balance_sources}. "
              f"Pairs dropped because both sides tokenise to the same ids: {dropped.get('train', 0)} train, "
              f"{dropped.get('val', 0)} val.")
    wall = run.get("wall_time_s")
    return "\n".join([
        "## Training", "", "Data (split by a hash of the prompt, so no prompt is in two splits; train counts after "
        "source balancing):", "", *rows, "", recipe, "",
        f"Wall time: {wall / 60:.1f} min ({wall:.0f} s) on {run.get('hardware', 'unknown hardware')}." if wall else "",
        "", "<details><summary>Full training config</summary>", "", "```yaml", dump_config(cfg).rstrip(), "```", "",
        "</details>", ""])


def _f(x: Any) -> str:
    return "–" if x is None else f"{x:.3f}"


def result_rows(name: str, r: dict[str, Any]) -> list[str]:
    """Table rows of one summary: its sources (when several), then the whole set."""
    rows = []
    for source, s in (r.get("by_source") or {}).items():
        low, high = s["accuracy_ci95"]
        rows.append(f"| {name} · {source} | {s['n_pairs']} | {_f(s['accuracy'])} | {_f(low)}–{_f(high)} | "
                    f"{_f(s['length_baseline_accuracy'])} |")
    low, high = r["accuracy_ci95"]
    label = f"{name} · all" if r.get("by_source") else name
    rows.append(f"| {label} | {r['n_pairs']} | {_f(r['accuracy'])} | {_f(low)}–{_f(high)} | "
                f"{_f(r['length_baseline_accuracy'])} |")
    return rows


def results_section(sets: dict[str, dict[str, Any]], title: str, note: str) -> str:
    """Accuracy with its 95% interval beside the length-only baseline, then every set's flags."""
    rows = ["| data | pairs | accuracy | 95% interval | length-only baseline |", "|---|---:|---:|---:|---:|"]
    flags = []
    for name, r in sets.items():
        if r.get("kind") == "ratings":
            rows.append(f"| {name} | {r['n_responses']} ratings | Spearman {_f(r['spearman'])} | – | – |")
        else:
            rows += result_rows(name, r)
        flags += [f"- **{name} · {f['kind']}**: {f['message']}" for f in r.get("flags", [])]
    flag_text = flags or ["- none raised"]
    return "\n".join([f"## {title}", "", note, "", *rows, "", "Diagnostics' flags:", "", *flag_text, ""])


def calibration_section(card: ModelCard, report: dict[str, Any]) -> str:
    cal, test = report.get("calibration"), report.get("test", {}).get("calibration")
    text = [f"## Calibration\n\nP(A preferred over B) = σ((r_A − r_B) / T) with **T = {card.temperature:.4g}**"]
    if cal:
        text.append(f", fitted on {cal['n_pairs']} validation pairs (ECE {cal['before']['ece']:.3f} at T = 1 → "
                    f"{cal['after']['ece']:.3f} at T)")
    if test:
        text.append(f"; on the held-out test pairs ECE is {test['after']['ece']:.3f} at T")
    return "".join(text) + (". Rewards are normalised for serving with the validation mean "
                            f"{card.reward_mean:.4g} and std {card.reward_std:.4g} (stored in `rmkit.json`).\n")


def loading_section(card: ModelCard) -> str:
    render = ("tok.apply_chat_template([{\"role\": \"user\", \"content\": prompt},\n"
              "                               {\"role\": \"assistant\", \"content\": response}], tokenize=False)"
              if card.template == "chat" else 'f"User: {prompt}\\n\\nAssistant: {response}"')
    auto = "AutoPeftModelForSequenceClassification" if card.finetune == "lora" else "AutoModelForSequenceClassification"
    lib = "peft" if card.finetune == "lora" else "transformers"
    mean_note = ("\n`mean` pooling has no plain-transformers equivalent: use rmkit to get this model's rewards.\n"
                 if card.pooling == "mean" else "")
    return f"""## How to use

In rmkit (the same rendering, truncation and readout as in training):

```python
from rmkit import Scorer
scorer = Scorer.load("MODEL_DIR")
scorer.score(["How do I boil an egg?"], ["Boil it for 9 minutes."])  # -> [raw reward]
```

`rmkit serve MODEL_DIR` serves it over HTTP (rmkit, OpenRLHF, NeMo Gym, vLLM routes) with a browser playground at
http://127.0.0.1:8000/.

In plain {lib} (one text at a time, so no padding question arises):

```python
import torch
from transformers import AutoTokenizer
from {lib} import {auto}

prompt, response = "How do I boil an egg?", "Boil it for 9 minutes."
tok = AutoTokenizer.from_pretrained("MODEL_DIR")
model = {auto}.from_pretrained("MODEL_DIR", num_labels=1).eval()
text = {render}
ids = tok(text, add_special_tokens={card.add_special_tokens}, return_tensors="pt")
with torch.no_grad():
    reward = model(**ids).logits[0, 0].item()
```
{mean_note}"""


def limits_section(report: dict[str, Any]) -> str:
    sources = report.get("run", {}).get("sources", {})
    n_train = sum(s.get("train", 0) for s in sources.values())
    kinds = sorted({f["kind"] for r in (report.get("test"), report.get("val")) if r for f in r.get("flags", [])})
    lines = ["## Known limits", "",
             f"- Trained on {n_train or 'few'} pairs from {len(sources) or 'its'} source(s): enough to show what the "
             "recipe learns, not a production reward model. It knows only what these data sets reward.",
             "- It is only as good as the languages, domains and labels of its training data (above) and is untested "
             "elsewhere; prompts longer than the token limit lose their beginning.",
             "- A reward is a relative score: compare responses to the same prompt; absolute values mean little.",
             "- An RL policy optimised against it will find its blind spots: check samples by hand and keep a held-out "
             "reward model or human check."]
    if kinds:
        lines.append(f"- The diagnostics raised {', '.join(kinds)} flags on held-out data (above): read them before "
                     "using it for RL.")
    return "\n".join(lines) + "\n"


def render_card(card: ModelCard, name: str, cfg: TrainConfig | None, report: dict[str, Any] | None) -> str:
    """The whole README.md. `cfg` and `report` (eval.json's dict) come from training; without them the card holds
    what rmkit.json knows."""
    report = report or {}
    licences = [s["licence"] for s in report.get("run", {}).get("sources", {}).values()]
    parts = [front_matter(card, licences), what_it_is(name, card)]
    if cfg is not None:
        parts.append(training_section(cfg, report))
    held_out = {k: report[k] for k in ("test", "val") if k in report}
    if held_out:
        parts.append(results_section(held_out, "Held-out results", "Pairwise accuracy (chosen scored above rejected) "
                                     "with its Wilson 95% interval, beside the length-only baseline (always pick the "
                                     "longer response) on the same pairs."))
    parts += [calibration_section(card, report), loading_section(card), limits_section(report),
              f"<sub>Written by rmkit {__version__}.</sub>\n"]
    return "\n".join(parts)


def _write(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: a reader never sees half a card
    return path


def write_model_card(model_dir: str | Path, cfg: TrainConfig | None = None, report: dict[str, Any] | None = None
                     ) -> Path:
    """Write model_dir/README.md (atomically) from rmkit.json, the training config and eval.json's report dict."""
    model_dir = Path(model_dir)
    name = model_dir.resolve().parent.name if model_dir.name == "model" else model_dir.name
    return _write(model_dir / CARD_NAME, render_card(read_card(model_dir), name, cfg, report))


def append_evaluation(model_dir: str | Path, eval_report: dict[str, Any]) -> Path:
    """Put `rmkit eval`'s results (its report dict) into the card, replacing an earlier rmkit eval section; a model
    directory without a card gets one first."""
    path = Path(model_dir) / CARD_NAME
    if not path.exists():
        write_model_card(model_dir)
    section = results_section(eval_report["datasets"], "Evaluation (rmkit eval)",
                              f"`rmkit eval` at T = {eval_report['temperature']:.4g}; same columns as above.")
    block = f"{EVAL_START}\n{section}{EVAL_END}\n"
    text = path.read_text()
    if EVAL_START in text and EVAL_END in text:
        head, rest = text.split(EVAL_START, 1)
        return _write(path, head + block + rest.split(EVAL_END, 1)[1].lstrip("\n"))
    return _write(path, text.rstrip("\n") + "\n\n" + block)
