from types import SimpleNamespace

import pytest

from rmkit.encoding import (
    Encoder,
    collate,
    encode_pairs,
    length_grouped_batches,
    pad_sequences,
    render,
    to_messages,
    token_budget_batches,
)
from rmkit.model import load_tokenizer


@pytest.fixture(scope="module")
def llama_tok(llama_dir):
    return load_tokenizer(str(llama_dir))


@pytest.fixture(scope="module")
def bert_tok(bert_dir):
    return load_tokenizer(str(bert_dir))


def test_hh_transcript_becomes_chat_turns():
    text = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Why?\n\nAssistant:"
    assert to_messages(text) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"},
    ]


def test_plain_render_writes_role_turns(bert_tok):
    assert render("Name a prime.", " 7", bert_tok, "plain") == "User: Name a prime.\n\nAssistant: 7"


def test_chat_render_uses_the_tokenizer_template(llama_tok):
    text = render([{"role": "user", "content": "Hi"}], "Yo", llama_tok, "chat")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n")


def test_hh_string_and_message_prompts_render_the_same(llama_tok):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "Ok?"}]
    hh = "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Ok?\n\nAssistant:"
    assert render(hh, " Sure", llama_tok, "chat") == render(messages, "Sure", llama_tok, "chat")


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_specials(bert_tok):
    enc = Encoder(bert_tok, max_length=8, add_special_tokens=True)
    ids = enc.encode(["one two three four five six seven eight nine ten"])[0]
    assert len(ids) == 8
    assert ids[0] == bert_tok.cls_token_id and ids[-1] == bert_tok.sep_token_id
    assert bert_tok.decode(ids[1:-1]) == "five six seven eight nine ten"


def test_pairs_identical_after_truncation_are_dropped_and_counted(bert_tok):
    pairs = [
        SimpleNamespace(prompt="long shared prompt " * 20, chosen="a b c same end", rejected="x y z same end", margin=None),
        SimpleNamespace(prompt="p", chosen="good", rejected="bad", margin=None),
    ]
    encoded, dropped = encode_pairs(pairs, Encoder(bert_tok, 4, True), "plain")  # [CLS] same end [SEP]
    assert dropped == 1 and [p.index for p in encoded] == [1]


def test_collate_puts_chosen_rows_before_rejected_rows():
    from rmkit.encoding import EncodedPair

    batch = collate([EncodedPair([1, 2], [3], 0.5, 0), EncodedPair([4], [5, 6, 7], None, 1)], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 0], [4, 0, 0], [3, 0, 0], [5, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]]
    assert batch.margin.tolist() == [0.5, 0.0]


def test_left_padding_aligns_tokens_to_the_right():
    ids, mask = pad_sequences([[5, 6], [7]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]


def test_length_grouped_batches_are_deterministic_and_cover_every_index():
    lengths = [(i * 37) % 101 for i in range(200)]
    a = length_grouped_batches(lengths, 8, seed=3)
    assert a == length_grouped_batches(lengths, 8, seed=3)
    assert a != length_grouped_batches(lengths, 8, seed=4)
    assert sorted(i for b in a for i in b) == list(range(200))


def test_length_grouping_cuts_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(400)]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    grouped = padded(length_grouped_batches(lengths, 8, seed=0, group=True))
    random_order = padded(length_grouped_batches(lengths, 8, seed=0, group=False))
    assert grouped < 0.7 * random_order


def test_token_budget_batches_respect_the_budget():
    lengths = [10, 50, 20, 40, 30, 5]
    batches = token_budget_batches(lengths, max_tokens=100, max_batch=8)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 100 or len(b) == 1 for b in batches)


def test_token_budget_batches_never_pad_a_short_row_up_to_a_long_one():
    assert token_budget_batches([100, 90, 10, 9], max_tokens=10_000, max_batch=8) == [[0, 1], [2, 3]]
    lengths = [512, 20, 300, 25, 480, 30, 310]
    for batch in token_budget_batches(lengths, max_tokens=16384, max_batch=64):
        assert min(lengths[i] for i in batch) >= 0.75 * max(lengths[i] for i in batch)


def test_collate_carries_soft_labels_with_nan_where_a_pair_has_none():
    import torch

    from rmkit.encoding import EncodedPair

    batch = collate([EncodedPair([1], [2], None, 0, 0.8), EncodedPair([3], [4], None, 1)], pad_id=0)
    assert batch.label_prob[0].item() == pytest.approx(0.8) and torch.isnan(batch.label_prob[1])
    assert collate([EncodedPair([1], [2], None, 0)], pad_id=0).label_prob is None


def test_keep_instruction_on_hand_made_regions():
    """Text "hhhhhh|g|iiii|g|rrrrrrrr", one character per token: 6 history, 4 instruction, 8 response, 2 glue.
    Budget 10 → room 8, instruction 4 whole, response 4 (first 2 + last 2), no history. Budget 16 → instruction
    and response whole (12), 2 of history, the newest. Budget 1 → only glue would fit: the last id, as 'left'."""
    from rmkit.encoding import Spans, keep_instruction

    ids = list(range(20))
    spans = Spans(history_end=6, instruction=(7, 11), response=(12, 20))
    assert keep_instruction(ids, ids, spans, 10) == [6, 7, 8, 9, 10, 11, 12, 13, 18, 19]
    assert keep_instruction(ids, ids, spans, 16) == [4, 5, *range(6, 20)]
    assert keep_instruction(ids, ids, spans, 1) == [19]
    assert keep_instruction(ids, ids, spans, 25) == ids


def test_keep_instruction_cuts_the_middle_of_a_long_instruction_when_the_answer_is_short():
    """History 0, glue 1 (index 0), instruction 12, glue 1, response 2; budget 8 → room 6: response 2 whole,
    instruction 4 (room − response, more than half): its first 2 and last 2 ids."""
    from rmkit.encoding import Spans, keep_instruction

    ids = list(range(16))
    spans = Spans(history_end=0, instruction=(1, 13), response=(14, 16))
    assert keep_instruction(ids, ids, spans, 8) == [0, 1, 2, 11, 12, 13, 14, 15]


def test_instruction_truncation_keeps_the_question_and_both_ends_of_a_long_answer(bert_tok):
    history = "\n\nHuman: " + "tell me about the weather " * 20 + "\n\nAssistant: " + "it is sunny " * 20
    prompt = history + "\n\nHuman: what is the capital of france?\n\nAssistant:"
    answer = "paris is the capital. " + "filler words here " * 40 + "that is all."
    text = render(prompt, answer, bert_tok, "plain")
    new = bert_tok.decode(Encoder(bert_tok, 40, True, "instruction").encode([text])[0][1:-1])
    old = bert_tok.decode(Encoder(bert_tok, 40, True, "left").encode([text])[0][1:-1])
    assert "user : what is the capital of france?" in new and "assistant : paris is the" in new
    assert new.endswith("that is all.") and "weather" not in new and "sunny" not in new
    assert "capital of france" not in old  # the old rule keeps only the answer's end


def test_instruction_truncation_finds_the_turns_in_a_chat_template(llama_tok):
    prompt = [{"role": "user", "content": "Old question " * 30}, {"role": "assistant", "content": "Old answer " * 30},
              {"role": "user", "content": "Name a prime number."}]
    text = render(prompt, "Seven. " + "Also more text. " * 50 + "Done.", llama_tok, "chat")
    assert text.spans is not None
    new = llama_tok.decode(Encoder(llama_tok, 48, False, "instruction").encode([text])[0])
    assert "<|im_start|>user\nName a prime number.<|im_end|>\n<|im_start|>assistant\nSeven." in new
    assert new.endswith("Done.<|im_end|>\n") and "Old answer" not in new


def test_instruction_truncation_leaves_short_texts_and_unrendered_text_as_the_left_rule_does(bert_tok):
    short = render("Name a prime.", "7", bert_tok, "plain")
    new, old = Encoder(bert_tok, 64, True, "instruction"), Encoder(bert_tok, 64, True, "left")
    assert new.encode([short]) == old.encode([short])
    plain_text = "one two three four five six seven eight nine ten"  # a str without spans: cut from the left
    assert Encoder(bert_tok, 8, True, "instruction").encode([plain_text]) == Encoder(bert_tok, 8, True).encode([plain_text])


def test_rendered_text_is_an_ordinary_string_and_edits_drop_the_spans(bert_tok):
    text = render("Name a prime.", "7", bert_tok, "plain")
    assert isinstance(text, str) and text.spans is not None
    assert text.spans.instruction == (6, 19) and text[text.spans.instruction[0]:text.spans.instruction[1]] == "Name a prime."
    assert not hasattr(text + " more", "spans") and not hasattr(text[:5], "spans")
