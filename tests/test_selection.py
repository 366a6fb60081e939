"""Active learning (`rmkit select`) and label triage (`rmkit triage`): hand-worked ranking rules, then the tiny model
end to end through the CLI."""

import json
import math

import numpy as np
import pytest

from rmkit.cli import main
from rmkit.selection import confident_disagreements, read_pool, top_k, uncertainty


def test_margin_uncertainty_is_highest_at_one_half():
    """1 − |2p − 1|: p = 0.5 → 1; 0.75 → 0.5; 0.1 → 0.2."""
    assert uncertainty([[0.5, 0.75, 0.1]]) == pytest.approx([1.0, 0.5, 0.2])


def test_margin_uncertainty_of_one_model_ranks_small_margins_first():
    """σ(Δ) for Δ = [3, −0.1, 1, −2]: |Δ| smallest first → pairs 1, 2, 3, 0."""
    p = 1 / (1 + np.exp(-np.array([3.0, -0.1, 1.0, -2.0])))
    assert top_k(uncertainty(p[None, :]), 4) == [1, 2, 3, 0]


def test_disagreement_is_the_spread_of_the_ensemble():
    """Models say [0.2, 0.9] and [0.8, 0.9]: population std of (0.2, 0.8) = 0.3, of (0.9, 0.9) = 0; "auto" with two
    models is disagreement; one model cannot disagree with itself."""
    probs = [[0.2, 0.9], [0.8, 0.9]]
    assert uncertainty(probs, "disagreement") == pytest.approx([0.3, 0.0])
    assert uncertainty(probs) == pytest.approx([0.3, 0.0])
    with pytest.raises(ValueError, match="ensemble"):
        uncertainty([[0.5, 0.6]], "disagreement")
    with pytest.raises(ValueError, match="unknown"):
        uncertainty(probs, "entropy")


def test_top_k_keeps_input_order_among_equal_values():
    """[0.2, 0.9, 0.2, 0.5], k = 3 → 0.9 (1), 0.5 (3), then the first 0.2 (0)."""
    assert top_k([0.2, 0.9, 0.2, 0.5], 3) == [1, 3, 0]


def test_confident_disagreements_list_the_pairs_the_model_contradicts_most_first():
    """Δ = [−3, 1, −1], T = 1: P(rejected) = σ(−Δ) = [0.953, 0.269, 0.731]; ≥ 0.7 → [0, 2]. With T = 4 the same
    pair 0 gives σ(0.75) = 0.679 < 0.7 and pair 2 σ(0.25) = 0.562: none."""
    idx, p = confident_disagreements([-3.0, 1.0, -1.0], 1.0, 0.7)
    assert idx == [0, 2]
    assert p == pytest.approx([0.9526, 0.2689, 0.7311], abs=1e-4)
    assert confident_disagreements([-3.0, 1.0, -1.0], 4.0, 0.7)[0] == []
    with pytest.raises(ValueError, match="min_prob"):
        confident_disagreements([1.0], 1.0, 0.3)


def test_read_pool_accepts_ab_and_chosen_rejected_rows_and_names_missing_keys():
    items = read_pool([{"prompt": "p", "response_A": "a", "response_B": "b"}, {"chosen": "c", "rejected": "d"}])
    assert [(i.prompt, i.a, i.b) for i in items] == [("p", "a", "b"), ("", "c", "d")]
    with pytest.raises(ValueError, match="<memory>:1: missing 'response_B'"):
        read_pool([{"prompt": "p", "response_A": "a"}])


POOL = [{"prompt": "Name a prime.", "response_A": "7", "response_B": "9"},
        {"prompt": "Capital of France?", "response_A": "Paris.", "response_B": "Lyon, I think."},
        {"prompt": "2+2?", "response_A": "4", "response_B": "five"},
        {"prompt": "Say hi.", "response_A": "hi there", "response_B": "bye", "id": "x"}]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_select_writes_the_k_smallest_margins_with_the_pool_rows_kept(llama_dir, llama_scorer, tmp_path):
    pool = _write(tmp_path / "pool.jsonl", POOL)
    out = tmp_path / "to_label.jsonl"
    assert main(["select", str(llama_dir), str(pool), "--k", "2", "--out", str(out)]) == 0
    rows = _read(out)
    a = llama_scorer.score([r["prompt"] for r in POOL], [r["response_A"] for r in POOL])
    b = llama_scorer.score([r["prompt"] for r in POOL], [r["response_B"] for r in POOL])
    smallest = sorted(range(4), key=lambda i: abs(a[i] - b[i]))[:2]
    assert [r["prompt"] for r in rows] == [POOL[i]["prompt"] for i in smallest]
    assert [r["rank"] for r in rows] == [1, 2]
    i = smallest[0]
    assert rows[0]["p_A"] == pytest.approx(1 / (1 + math.exp(-(a[i] - b[i]))), abs=1e-6)
    assert rows[0]["response_A"] == POOL[i]["response_A"]


def test_select_with_an_ensemble_of_identical_models_sees_no_disagreement(llama_dir, tmp_path):
    pool = _write(tmp_path / "pool.jsonl", POOL)
    out = tmp_path / "to_label.jsonl"
    assert main(["select", str(llama_dir), str(pool), "--k", "4", "--out", str(out), "--ensemble", str(llama_dir)]) == 0
    rows = _read(out)
    assert [r["uncertainty"] for r in rows] == pytest.approx([0.0] * 4, abs=1e-9)
    assert all(len(r["p_A_by_model"]) == 2 for r in rows)


def test_triage_lists_exactly_the_pairs_the_model_gets_wrong_at_one_half(llama_dir, llama_scorer, tmp_path):
    """Each pool row labelled both ways (A, then B preferred): the model contradicts exactly one label of each, and
    with min_prob 0.5 and T = 1, P(rejected preferred) ≥ 0.5 ⇔ Δ ≤ 0, so 4 of the 8 pairs are listed."""
    labelled = [{**r, "preferred": side} for side in "AB" for r in POOL]
    data = _write(tmp_path / "labelled.jsonl", labelled)
    out = tmp_path / "suspects.jsonl"
    assert main(["triage", str(llama_dir), str(data), "--out", str(out), "--min-prob", "0.5"]) == 0
    rows = _read(out)
    a = llama_scorer.score([r["prompt"] for r in POOL], [r["response_A"] for r in POOL])
    b = llama_scorer.score([r["prompt"] for r in POOL], [r["response_B"] for r in POOL])
    assert len(rows) == 4
    assert {(r["prompt"], r["chosen_position"]) for r in rows} == {
        (p["prompt"], "B" if a[i] > b[i] else "A") for i, p in enumerate(POOL)}
    probs = [r["p_model_prefers_rejected"] for r in rows]
    assert probs == sorted(probs, reverse=True)
    assert main(["triage", str(llama_dir), str(data), "--out", str(out), "--min-prob", "0.5", "--top", "1"]) == 0
    assert len(_read(out)) == 1
