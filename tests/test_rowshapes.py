"""Data as it comes: HelpSteer3 preference rows and UltraFeedback-style graded rows, written from their published
schemas (nvidia/HelpSteer3 dataset card, openbmb/UltraFeedback README), and every column name configurable."""

import json
import logging
from typing import get_args

import pytest

from rmkit.config import DataConfig
from rmkit.data import Format, read_pairs
from rmkit.rows import DataError
from rmkit.rowshapes import Keys


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def helpsteer3_row(preference, **extra):
    """A nvidia/HelpSteer3 preference row: domain, language, context (messages), response1, response2,
    overall_preference (−3..3) and individual_preference (per annotator: score, reasoning)."""
    return {
        "domain": "general", "language": "english",
        "context": [user("Name a prime."), assistant("Which range?"), user("Below 10.")],
        "response1": "7 is prime.", "response2": "9 is prime.",
        "overall_preference": preference,
        "individual_preference": [{"score": preference, "reasoning": "@Response 1 is correct."}],
        **extra,
    }


def ultrafeedback_row(*ratings):
    """An openbmb/UltraFeedback row: source, instruction, models, completions with model, principle,
    custom_system_prompt, response, annotations (string Ratings), critique, overall_score, fine-grained_score."""
    completions = [{
        "model": f"model-{i}", "principle": "helpfulness", "custom_system_prompt": "Be helpful.",
        "response": f"answer {i}",
        "annotations": {"helpfulness": {"Rating": "3", "Rationale": "fine"}},
        "critique": "ok", "overall_score": score, "fine-grained_score": 5 - score,
    } for i, score in enumerate(ratings)]
    return {"source": "sharegpt", "instruction": "Plan a trip to Cairo.", "models": [c["model"] for c in completions],
            "completions": completions, "correct_answers": ["None"], "incorrect_answers": ["None"]}


@pytest.mark.parametrize("preference, chosen, rejected", [(-3, "7 is prime.", "9 is prime."),
                                                          (-1, "7 is prime.", "9 is prime."),
                                                          (2, "9 is prime.", "7 is prime.")])
def test_helpsteer3_negative_prefers_response1_and_the_strength_is_the_margin(tmp_path, preference, chosen, rejected):
    [pair] = read_pairs(write_jsonl(tmp_path / "hs3.jsonl", [helpsteer3_row(preference)]))
    assert pair.prompt == helpsteer3_row(0)["context"]
    assert (pair.chosen, pair.rejected, pair.margin) == ([assistant(chosen)], [assistant(rejected)],
                                                         float(abs(preference)))


def test_helpsteer3_ties_give_no_pair_and_are_counted_in_one_warning(tmp_path, caplog):
    rows = [helpsteer3_row(0), helpsteer3_row(-2), helpsteer3_row(0)]
    path = write_jsonl(tmp_path / "hs3.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="rmkit.data"):
        pairs = read_pairs(path)
    assert [p.origin for p in pairs] == [f"{path}:2"]
    assert "2 rows carried no preference" in caplog.text and f"{path}:1, {path}:3" in caplog.text


def test_a_file_of_only_helpsteer3_ties_is_refused_clearly(tmp_path):
    with pytest.raises(DataError, match=r"no pairs: 2 rows are ties"):
        read_pairs(write_jsonl(tmp_path / "hs3.jsonl", [helpsteer3_row(0), helpsteer3_row(0)]))


@pytest.mark.parametrize("bad, message", [(4, "'overall_preference' is 4, not an integer from −3 to 3"),
                                          (1.5, "is 1.5, not an integer"), ("much", "'much', not a number")])
def test_helpsteer3_preference_outside_the_scale_names_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "hs3.jsonl", [helpsteer3_row(-1), helpsteer3_row(bad)])
    with pytest.raises(DataError, match=f"^{path}:2: .*{message}"):
        read_pairs(path)


def test_helpsteer3_reads_from_parquet_as_the_hub_serves_it(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist([helpsteer3_row(3), helpsteer3_row(-2)]), tmp_path / "train.parquet")
    pairs = read_pairs(tmp_path / "train.parquet", format="helpsteer3")
    assert [(p.chosen[0]["content"], p.margin) for p in pairs] == [("9 is prime.", 3.0), ("7 is prime.", 2.0)]


def test_ultrafeedback_rows_become_every_differently_rated_pair_higher_rating_chosen(tmp_path):
    """overall_score 7.5, 9, 7.5, 4: c1 beats all three, c0 and c2 tie with each other and beat c3 → 5 pairs."""
    [row] = rows = [ultrafeedback_row(7.5, 9, 7.5, 4)]
    pairs = read_pairs(write_jsonl(tmp_path / "uf.jsonl", rows))
    got = sorted((p.chosen, p.rejected) for p in pairs)
    assert got == sorted([("answer 1", "answer 0"), ("answer 1", "answer 2"), ("answer 1", "answer 3"),
                          ("answer 0", "answer 3"), ("answer 2", "answer 3")])
    assert {p.prompt for p in pairs} == {row["instruction"]} and {p.margin for p in pairs} == {None}


def test_the_rating_column_is_configurable(tmp_path):
    """fine-grained_score is 5 − overall_score here, so the order flips."""
    path = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback_row(1, 4)])
    [pair] = read_pairs(path, rating_key="fine-grained_score")
    assert (pair.chosen, pair.rejected) == ("answer 0", "answer 1")


def test_a_graded_row_whose_ratings_all_tie_is_skipped_and_counted(tmp_path, caplog):
    path = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback_row(5, 5), ultrafeedback_row(2, 6)])
    with caplog.at_level(logging.WARNING, logger="rmkit.data"):
        [pair] = read_pairs(path)
    assert pair.chosen == "answer 1" and "1 rows carried no preference" in caplog.text


def test_a_graded_completion_without_a_rating_names_the_column_to_set(tmp_path):
    row = ultrafeedback_row(1, 2)
    del row["completions"][1]["overall_score"]
    with pytest.raises(DataError, match=r":1: completions\[1\] lacks 'response' or 'overall_score'.*rating_key"):
        read_pairs(write_jsonl(tmp_path / "uf.jsonl", [row]))


def test_ranked_rows_still_read_as_ranked_beside_graded_detection(tmp_path):
    row = {"context": "Name a prime.", "completions": [{"rank": 1, "completion": "9"}, {"rank": 0, "completion": "7"}]}
    [pair] = read_pairs(write_jsonl(tmp_path / "ranked.jsonl", [row]))
    assert (pair.chosen, pair.rejected) == ("7", "9")


def test_ranked_ab_and_ratings_keys_are_configurable(tmp_path):
    rows = [{"question": "Q", "answers": [{"place": 2, "text": "b"}, {"place": 1, "text": "a"}]},
            {"question": "Q2", "first": "x", "second": "y", "winner": "B"},
            {"q": "Q3", "reply": "good", "stars": 5}, {"q": "Q3", "reply": "bad", "stars": 1}]
    ranked = read_pairs(rows[:1], format="ranked", context_key="question", completions_key="answers",
                        rank_key="place", completion_key="text")
    ab = read_pairs(rows[1:2], prompt_key="question", response_a_key="first", response_b_key="second",
                    preferred_key="winner")
    rated = read_pairs(rows[2:], prompt_key="q", response_key="reply", score_key="stars")
    assert [(p.prompt, p.chosen, p.rejected) for p in ranked + ab + rated] == [("Q", "a", "b"), ("Q2", "y", "x"),
                                                                                ("Q3", "good", "bad")]
    assert ab[0].chosen_position == "B"


def test_an_unknown_column_key_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown column key\(s\) answer_key; known: prompt_key, chosen_key"):
        read_pairs([{"prompt": "p", "chosen": "a", "rejected": "b"}], answer_key="x")


def test_data_config_offers_every_key_and_format_read_pairs_takes():
    cfg = DataConfig(margin_key="strength", rating_key="fine-grained_score")
    assert Keys.from_names(**cfg.column_keys()) == Keys(margin="strength", rating="fine-grained_score")
    assert get_args(DataConfig.model_fields["format"].annotation) == get_args(Format)


def test_training_reads_a_configured_margin_column(tmp_path):
    from rmkit.splits import load_splits

    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b", "strength": i} for i in range(4)]
    cfg = DataConfig(paths=[str(write_jsonl(tmp_path / "m.jsonl", rows))], margin_key="strength", val_fraction=0,
                     test_fraction=0)
    assert sorted(p.margin for p in load_splits(cfg, seed=0)["train"]) == [0.0, 1.0, 2.0, 3.0]
