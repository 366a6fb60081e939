"""Tests for rmkit.data: every format of docs/protocols.md §1, every container, file:line errors and the prompt split."""

import hashlib
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rmkit.data import (
    DataError,
    PreferencePair,
    RatedResponse,
    ratings_to_pairs,
    read_pairs,
    read_ratings,
    read_rows,
)
from rmkit.splits import split_by_prompt

REPO = Path(__file__).resolve().parents[1]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    """One JSON object per line; a row given as a str is written verbatim (for broken lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- TRL's four variants (docs/protocols.md §1)


def test_trl_standard_explicit_prompt_stays_text(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}])
    [pair] = read_pairs(path)
    assert pair == PreferencePair("The sky is", " blue.", " green.", subset="pairs", origin=f"{path}:1")


def test_trl_standard_implicit_prompt_gives_an_empty_prompt(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    [pair] = read_pairs(path)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("", "The sky is blue.", "The sky is green.")


def test_trl_conversational_explicit_keeps_message_lists_and_margin(tmp_path):
    row = {"prompt": [user("What color is the sky?")], "chosen": [assistant("It is blue.")],
           "rejected": [assistant("It is green.")], "margin": 0.5}
    [pair] = read_pairs(write_jsonl(tmp_path / "pairs.jsonl", [row]))
    assert (pair.prompt, pair.chosen, pair.rejected) == (row["prompt"], row["chosen"], row["rejected"])
    assert pair.margin == 0.5


def test_trl_conversational_implicit_is_split_at_the_longest_shared_message_prefix(tmp_path):
    shared = [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello!"), user("Sky colour?")]
    row = {"chosen": [*shared, assistant("Blue.")], "rejected": [*shared, assistant("Green."), user("Sure?")]}
    [pair] = read_pairs(write_jsonl(tmp_path / "pairs.jsonl", [row]))
    assert pair.prompt == shared
    assert pair.chosen == [assistant("Blue.")]
    assert pair.rejected == [assistant("Green."), user("Sure?")]


def test_a_string_prompt_with_message_answers_becomes_one_user_message(tmp_path):
    row = {"prompt": "Sky colour?", "chosen": [assistant("Blue.")], "rejected": "Green."}
    [pair] = read_pairs(write_jsonl(tmp_path / "pairs.jsonl", [row]))
    assert (pair.prompt, pair.chosen, pair.rejected) == ([user("Sky colour?")], [assistant("Blue.")],
                                                         [assistant("Green.")])


def test_an_empty_answer_is_a_valid_answer(tmp_path):
    """Saying nothing can be the preferred answer (HH-RLHF harmless) or the rejected one (PandaLM)."""
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Her home address?", "chosen": " ", "rejected": "It is"}])
    assert read_pairs(path)[0].chosen == " "


def test_configurable_keys_read_other_column_names(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "good": "4", "bad": "5", "weight": 2}])
    [pair] = read_pairs(path, prompt_key="question", chosen_key="good", rejected_key="bad", margin_key="weight")
    assert (pair.prompt, pair.chosen, pair.rejected, pair.margin) == ("2+2?", "4", "5", 2.0)


def test_subset_and_id_come_from_the_row_else_the_file_stem(tmp_path):
    rows = [{"id": 7, "subset": "math", "prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "c", "rejected": "d"}]
    first, second = read_pairs(write_jsonl(tmp_path / "mix.jsonl", rows))
    assert (first.subset, first.id, second.subset, second.id) == ("math", "7", "mix", "")
    assert read_pairs(rows)[1].subset == ""


# ---------------------------------------------------------------- HH, ranked, A/B, ratings (docs/protocols.md §1)


def test_hh_transcript_is_split_at_the_last_assistant_marker(tmp_path):
    rows = [{"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.",
             "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5, I think."},
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hey.\n\nHuman: Bye\n\nAssistant: Bye!",
             "rejected": "\n\nHuman: Hi\n\nAssistant: Hey.\n\nHuman: Bye\n\nAssistant: No."}]
    first, second = read_pairs(write_jsonl(tmp_path / "hh.jsonl", rows))
    assert (first.prompt, first.chosen, first.rejected) == ("\n\nHuman: What is 2+2?\n\nAssistant:", " 4.",
                                                            " 5, I think.")
    assert second.prompt == "\n\nHuman: Hi\n\nAssistant: Hey.\n\nHuman: Bye\n\nAssistant:"
    assert (second.chosen, second.rejected) == (" Bye!", " No.")


def test_hh_looking_rows_read_as_implicit_pairs_when_the_format_is_named(tmp_path):
    row = {"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant: B"}
    [pair] = read_pairs(write_jsonl(tmp_path / "hh.jsonl", [row]), format="pairs")
    assert (pair.prompt, pair.chosen) == ("", row["chosen"])


def test_ranked_k3_gives_three_ordered_pairs_with_the_lower_rank_chosen(tmp_path):
    row = {"context": [user("Name a prime.")], "completions": [
        {"rank": 2, "completion": [assistant("9")]},
        {"rank": 0, "completion": [assistant("7")]},
        {"rank": 1, "completion": [assistant("1")]}]}
    pairs = read_pairs(write_jsonl(tmp_path / "ranked.jsonl", [row]))
    assert [(p.chosen[0]["content"], p.rejected[0]["content"]) for p in pairs] == [("7", "9"), ("7", "1"), ("1", "9")]
    assert all(p.prompt == [user("Name a prime.")] and p.origin.endswith(":1") for p in pairs)


def test_ranked_equal_ranks_are_ties_and_give_no_pair(tmp_path):
    """Ranks 0, 1, 1: the two rank-1 completions tie, so only 0>1a and 0>1b remain."""
    row = {"context": "Name a prime.", "completions": [
        {"rank": 1, "completion": "9"}, {"rank": 0, "completion": "7"}, {"rank": 1, "completion": "1"}]}
    pairs = read_pairs(write_jsonl(tmp_path / "ranked.jsonl", [row]))
    assert [(p.chosen, p.rejected) for p in pairs] == [("7", "9"), ("7", "1")]
    assert {p.prompt for p in pairs} == {"Name a prime."}


@pytest.mark.parametrize("preferred, chosen, rejected", [("A", "7", "9"), ("B", "9", "7")])
def test_ab_rows_keep_the_position_of_the_preferred_answer(tmp_path, preferred, chosen, rejected):
    row = {"prompt": "Name a prime.", "response_A": "7", "response_B": "9", "preferred": preferred}
    [pair] = read_pairs(write_jsonl(tmp_path / "ab.jsonl", [row]))
    assert (pair.chosen, pair.rejected, pair.chosen_position) == (chosen, rejected, preferred)


def test_ratings_pair_up_within_a_prompt_and_equal_scores_give_no_pair(tmp_path):
    """Scores 4, 1, 4 for one prompt: 4>1 twice; the two 4s tie. The lone rating of prompt Q2 pairs with nothing."""
    rows = [{"prompt": "Q", "response": "a", "score": 4}, {"prompt": "Q", "response": "b", "score": 1},
            {"prompt": "Q2", "response": "x", "score": 3}, {"prompt": "Q", "response": "c", "score": 4}]
    path = write_jsonl(tmp_path / "rated.jsonl", rows)
    pairs = read_pairs(path)
    assert [(p.prompt, p.chosen, p.rejected, p.margin) for p in pairs] == [("Q", "a", "b", None), ("Q", "c", "b", None)]
    assert pairs[0].origin == f"{path}:1,{path}:2"


def test_helpsteer2_rows_are_scored_by_helpfulness(tmp_path):
    rows = [{"prompt": "Name a prime.", "response": "7", "helpfulness": 4, "correctness": 4, "coherence": 4},
            {"prompt": "Name a prime.", "response": "9", "helpfulness": 0, "correctness": 0, "coherence": 4}]
    path = write_jsonl(tmp_path / "helpsteer.jsonl", rows)
    assert [r.score for r in read_ratings(path)] == [4.0, 0.0]
    [pair] = read_pairs(path)
    assert (pair.chosen, pair.rejected) == ("7", "9")


def test_read_ratings_uses_configurable_keys_and_wraps_answers_to_chat_prompts():
    rows = [{"q": [user("Hi")], "a": "Hello", "stars": "5"}]
    [rated] = read_ratings(rows, prompt_key="q", response_key="a", score_key="stars")
    assert rated == RatedResponse([user("Hi")], [assistant("Hello")], 5.0, "", "<memory>:1")


def test_ratings_to_pairs_puts_the_higher_score_first():
    rated = [RatedResponse("Q", "low", 1.0, origin="f:1"), RatedResponse("Q", "high", 2.5, origin="f:2")]
    assert ratings_to_pairs(rated) == [PreferencePair("Q", "high", "low", origin="f:2,f:1")]


# ---------------------------------------------------------------- containers


ROWS = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 1.5},
        {"prompt": "2+2=", "chosen": "4", "rejected": "5", "margin": 0.0}]


def _jsonl(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", ROWS)


def _json_array(tmp_path):
    (tmp_path / "pairs.json").write_text(json.dumps(ROWS))
    return tmp_path / "pairs.json"


def _json_data(tmp_path):
    (tmp_path / "pairs.json").write_text(json.dumps({"data": ROWS}))
    return tmp_path / "pairs.json"


def _csv(tmp_path):
    (tmp_path / "pairs.csv").write_text('prompt,chosen,rejected,margin\nThe sky is, blue., green.,1.5\n2+2=,4,5,0\n')
    return tmp_path / "pairs.csv"


def _parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "pairs.parquet")
    return tmp_path / "pairs.parquet"


def _saved_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(tmp_path / "pairs")
    return tmp_path / "pairs"


def _dataset(tmp_path):
    import datasets

    return datasets.Dataset.from_list(ROWS)


def _dicts(tmp_path):
    return ROWS


@pytest.mark.parametrize("make, subset, lines", [
    (_jsonl, "pairs", (1, 2)), (_json_array, "pairs", (1, 2)), (_json_data, "pairs", (1, 2)), (_csv, "pairs", (2, 3)),
    (_parquet, "pairs", (1, 2)), (_saved_dataset, "pairs", (1, 2)), (_dataset, "", (1, 2)), (_dicts, "", (1, 2))])
def test_every_container_gives_the_same_pairs(tmp_path, make, subset, lines):
    source = make(tmp_path)
    pairs = read_pairs(source)
    name = str(source) if isinstance(source, Path) else "<memory>"
    assert [(p.prompt, p.chosen, p.rejected, p.margin) for p in pairs] == [
        ("The sky is", " blue.", " green.", 1.5), ("2+2=", "4", "5", 0.0)]
    assert [p.origin for p in pairs] == [f"{name}:{i}" for i in lines]
    assert {p.subset for p in pairs} == {subset}


def test_chat_messages_survive_parquet_and_null_struct_fields_are_dropped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": [user("Hi")], "chosen": [{"role": "assistant", "content": "Hey", "name": "bot"}],
             "rejected": [assistant("Go away")]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    [pair] = read_pairs(tmp_path / "chat.parquet")
    assert (pair.prompt, pair.chosen, pair.rejected) == (rows[0]["prompt"], rows[0]["chosen"], [assistant("Go away")])


def test_csv_cells_holding_json_are_parsed_and_rows_are_numbered_from_where_they_start(tmp_path):
    path = tmp_path / "chat.csv"
    path.write_text('prompt,chosen,rejected\n"Line one\nline two",a,b\n'
                    '"[{""role"": ""user"", ""content"": ""Hi""}]",Hey,"[1] is not JSON chat"\n')
    first, second = read_pairs(path)
    assert (first.prompt, first.origin) == ("Line one\nline two", f"{path}:2")
    assert (second.prompt, second.chosen, second.rejected) == ([user("Hi")], [assistant("Hey")],
                                                               [assistant("[1] is not JSON chat")])
    assert second.origin == f"{path}:4"


def test_read_rows_yields_origin_and_row_and_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, "", {"b": 2}])
    assert list(read_rows(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:3", {"b": 2})]


def test_a_saved_dataset_dict_asks_for_one_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(tmp_path / "dd")
    with pytest.raises(DataError, match=r"dd: a DatasetDict with splits train; pass one split, e\.g\. .*dd/train"):
        read_pairs(tmp_path / "dd")


def test_an_unknown_extension_lists_the_supported_ones(tmp_path):
    (tmp_path / "pairs.txt").write_text("hi")
    with pytest.raises(DataError, match=r"pairs\.txt: unsupported file type '\.txt'\. Supported: \.jsonl, \.json"):
        read_pairs(tmp_path / "pairs.txt")


def test_a_missing_file_a_plain_folder_and_a_wrong_source_type_are_explained(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="folder: a folder, but not one written by datasets' save_to_disk"):
        read_pairs(tmp_path / "folder")
    with pytest.raises(TypeError, match="source is a dict; pass a path, a datasets.Dataset or a list of dicts"):
        read_pairs({"prompt": "p", "chosen": "a", "rejected": "b"})


def test_an_in_memory_list_names_its_rows_from_one():
    with pytest.raises(DataError, match=r"^<memory>:2: row is 'oops', not a JSON object"):
        read_pairs([GOOD, "oops"])


@pytest.mark.parametrize("text, message", [("", "no rows found"), ('{"rows": []}', "the top level is a dict")])
def test_whole_file_problems_name_the_file_without_a_line(tmp_path, text, message):
    (tmp_path / "empty.json").write_text(text or "[]")
    with pytest.raises(DataError, match=f"^{tmp_path / 'empty.json'}: {message}"):
        read_pairs(tmp_path / "empty.json")


# ---------------------------------------------------------------- bad data: file:line errors

GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}
BAD_ROWS = {
    "missing key": ({"prompt": "p", "chosen": "a"}, "missing key 'rejected' (found keys: prompt, chosen)"),
    "number as text": ({"prompt": "p", "chosen": 5, "rejected": "b"}, "'chosen' is int 5"),
    "blank prompt": ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "'prompt' is blank"),
    "empty message content": ({"prompt": [user(" ")], "chosen": "a", "rejected": "b"}, "'prompt'[0] has empty content"),
    "empty message list": ({"prompt": "p", "chosen": [], "rejected": "b"}, "'chosen' is an empty message list"),
    "text tie": ({"prompt": "p", "chosen": "same ", "rejected": " same"}, "are the same (a tie"),
    "chat tie": ({"prompt": [user("p")], "chosen": [assistant("x")], "rejected": "x"}, "are the same (a tie"),
    "non-numeric margin": ({**GOOD, "margin": "big"}, "'margin' is 'big', not a number"),
    "non-finite margin": ({**GOOD, "margin": math.inf}, "'margin' is inf"),
    "message not a dict": ({"prompt": ["hi"], "chosen": "a", "rejected": "b"}, "'prompt'[0] is 'hi', not a message"),
    "unknown role": ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"},
                     "'prompt'[0] has role 'bot' (found keys: prompt, chosen, rejected). Use one of the roles system, "
                     "developer, user, assistant, tool."),
    "mixed implicit sides": ({"chosen": [assistant("a")], "rejected": "b"}, "mix text and messages"),
    "chat sides differ before the answer": ({"chosen": [user("a"), assistant("x")], "rejected": [user("b"),
                                            assistant("y")]}, "differ at message 0, a 'user' message"),
    "unrecognised shape": ({"question": "q", "answer": "a"}, "unrecognised row shape (found keys: question, answer). "
                           "Expected one of pairs: prompt (optional), chosen, rejected"),
    "bad preferred": ({"prompt": "p", "response_A": "a", "response_B": "b", "preferred": "a"},
                      "'preferred' is 'a' (found keys: prompt, response_A, response_B, preferred). Allowed values are "
                      "exactly 'A' and 'B'"),
    "hh prompts differ": ({"chosen": "\n\nHuman: Hi\n\nAssistant: a", "rejected": "\n\nHuman: Yo\n\nAssistant: b"},
                          "the dialogues before the last '\\n\\nAssistant:' differ (from character 9)"),
    "ranked with one completion": ({"context": "c", "completions": [{"rank": 0, "completion": "a"}]},
                                   "'completions' is [{'rank': 0, 'completion': 'a'}], not a list of 2 or more"),
    "ranked all tied": ({"context": "c", "completions": [{"rank": 1, "completion": "a"},
                                                         {"rank": 1, "completion": "b"}]}, "same rank"),
    "rating without a score": ({"prompt": "p", "response": "a"}, "missing key 'score'"),
    "invalid JSON": ('{"prompt": "p", "chosen": "a",}', "invalid JSON (Expecting property name"),
    "not an object": ("[1, 2]", "row is [1, 2], not a JSON object"),
}


@pytest.mark.parametrize("bad, message", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_rows_raise_a_data_error_naming_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "", bad, GOOD])  # line 2 blank: the bad row is on line 3
    with pytest.raises(DataError) as info:
        read_pairs(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_a_bad_csv_row_names_its_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,chosen,rejected\np,a,b\np,a,a\n")
    with pytest.raises(DataError, match=f"^{path}:3: 'chosen' and 'rejected' are the same"):
        read_pairs(path)


def test_a_bad_json_array_element_names_its_index(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD, GOOD, {"prompt": "p", "chosen": "a"}]))
    with pytest.raises(DataError, match=f"^{path}:3: missing key 'rejected'"):
        read_pairs(path)


def test_skip_bad_skips_bad_rows_and_warns_once_with_the_count(tmp_path, caplog):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, "{oops", GOOD, {"prompt": "p", "chosen": "a"}, GOOD])
    with caplog.at_level(logging.WARNING, logger="rmkit.data"):
        pairs = read_pairs(path, skip_bad=True)
    assert [p.origin for p in pairs] == [f"{path}:1", f"{path}:3", f"{path}:5"]
    [record] = caplog.records
    assert "skipped 2 bad rows of 5" in record.getMessage()
    assert f"{path}:2: invalid JSON" in record.getMessage() and f"{path}:4: missing key" in record.getMessage()


def test_skip_bad_still_raises_when_every_row_is_bad(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "rejected": "b"}, {"chosen": 1, "rejected": 2}])
    with pytest.raises(DataError, match=f"^{path}: all 2 rows are bad; the first: {path}:1: missing key 'chosen'"):
        read_pairs(path, skip_bad=True)


# ---------------------------------------------------------------- split_by_prompt


def _pairs_for_prompts(n_prompts, per_prompt=3):
    return [PreferencePair(f"prompt {i}", f"good {j}", f"bad {j}") for i in range(n_prompts) for j in range(per_prompt)]


def test_split_is_deterministic_and_never_puts_one_prompt_in_two_splits():
    pairs = _pairs_for_prompts(200)
    train, val, test = split_by_prompt(pairs, val_fraction=0.1, test_fraction=0.2)
    assert (train, val, test) == split_by_prompt(list(pairs), 0.1, 0.2)
    prompts = [{p.prompt for p in split} for split in (train, val, test)]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert len(train) + len(val) + len(test) == 600
    assert 20 <= len(test) / 3 <= 60 and 5 <= len(val) / 3 <= 35  # ~40 and ~20 of 200 prompts


def test_split_follows_the_documented_hash():
    """h = int(sha256("rmkit\\0" + prompt)[:15], 16) / 16**15; test iff h < test_fraction."""
    pairs = _pairs_for_prompts(20, per_prompt=1)
    h = [int(hashlib.sha256(("rmkit\0" + p.prompt).encode()).hexdigest()[:15], 16) / 16**15 for p in pairs]
    cut = sorted(h)[5]  # the 5 prompts below the cut go to test; nothing to val
    train, val, test = split_by_prompt(pairs, 0.0, cut)
    assert (len(train), len(val), len(test)) == (15, 0, 5)
    assert {p.prompt for p in test} == {p.prompt for p, x in zip(pairs, h, strict=True) if x < cut}


def test_chat_prompts_with_the_same_messages_land_together_and_salt_changes_the_split():
    pairs = [PreferencePair([{"content": f"q{i}", "role": "user"}], "a", "b") for i in range(50)]
    twins = [PreferencePair([user(f"q{i}")], "c", "d") for i in range(50)]  # same messages, other key order
    train, val, test = split_by_prompt(pairs + twins, 0.3, 0.3)
    for split in (train, val, test):
        assert sorted(p.prompt_key() for p in split if p.chosen == "a") == sorted(
            p.prompt_key() for p in split if p.chosen == "c")
    assert split_by_prompt(pairs, 0.3, 0.3, salt="other") != split_by_prompt(pairs, 0.3, 0.3)


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.5, 0.5), (0.2, 1.0), (math.nan, 0.1)])
def test_split_rejects_fractions_that_leave_no_training_data(val, test):
    with pytest.raises(ValueError, match="fraction"):
        split_by_prompt(_pairs_for_prompts(2), val, test)


# ---------------------------------------------------------------- vendored data and import weight


@pytest.mark.parametrize("folder, count", [("hh-rlhf-harmless", 2061), ("pandalm", 804)])
def test_vendored_data_loads_as_text_pairs(folder, count):
    pairs = read_pairs(REPO / "data" / folder / "pairs.jsonl")
    assert len(pairs) == count
    assert all(isinstance(p.prompt, str) and p.prompt and p.subset and p.id for p in pairs)


def test_importing_rmkit_data_loads_no_heavy_library():
    code = "import sys, rmkit.data; print(sorted({'torch', 'transformers', 'datasets', 'pyarrow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_implicit_prompt_text_pairs_are_split_by_their_chosen_text():
    """With prompt "" for every pair, hashing the prompt alone would put them all in one split."""
    pairs = [PreferencePair("", f"answer {i}", f"other {i}") for i in range(100)]
    train, val, test = split_by_prompt(pairs, 0.25, 0.25)
    assert train and val and test


def test_soft_label_is_read_from_judge_prob_chosen_and_must_be_a_probability(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "judge_prob_chosen": 0.83},
            {"prompt": "q", "chosen": "a", "rejected": "b"}]
    first, second = read_pairs(write_jsonl(tmp_path / "soft.jsonl", rows))
    assert (first.label_prob, second.label_prob) == (0.83, None)
    [custom] = read_pairs(write_jsonl(tmp_path / "custom.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b",
                                                                    "p": 0.6}]), label_prob_key="p")
    assert custom.label_prob == 0.6
    path = write_jsonl(tmp_path / "bad.jsonl", [rows[1], {**rows[0], "judge_prob_chosen": 1.5}])
    with pytest.raises(DataError, match=rf"^{path}:2: 'judge_prob_chosen' is 1.5, not a probability"):
        read_pairs(path)
