import json

import pytest
import torch
from transformers import AutoTokenizer

from conftest import plain_transformers_rewards
from rmkit.encoding import pad_sequences
from rmkit.model import last_attended_index, load_model, merge_lora, read_card, right_padded
from rmkit.scoring import Scorer

TEXTS = [("What is 2+2?", "4"), ("\n\nHuman: Tell me a joke\n\nAssistant:", " Why did the chicken cross the road?"),
         ("Hi", "Hello there, how can I help you today?")]


def _scores(model, tokenizer, ids, side):
    with torch.inference_mode():
        return model(*pad_sequences(ids, tokenizer.pad_token_id, side))


def test_last_attended_index_reads_the_mask_on_either_side():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]])
    assert last_attended_index(mask).tolist() == [1, 2, 2]


def test_right_padded_moves_attended_tokens_first():
    ids, mask = right_padded(torch.tensor([[0, 0, 7, 8]]), torch.tensor([[0, 0, 1, 1]]))
    assert ids.tolist() == [[7, 8, 0, 0]] and mask.tolist() == [[1, 1, 0, 0]]


@pytest.mark.parametrize("fixture", ["llama_dir", "bert_dir"])
def test_reward_is_the_same_with_left_and_right_padding(fixture, request):
    scorer = Scorer.load(request.getfixturevalue(fixture), device="cpu")
    ids = scorer.encoder.encode([scorer.render(p, r) for p, r in TEXTS])
    right = _scores(scorer.model, scorer.tokenizer, ids, "right")
    left = _scores(scorer.model, scorer.tokenizer, ids, "left")
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    assert right.std() > 1e-4  # the texts really score differently


def test_reward_is_read_at_eos_when_pad_equals_eos(llama_dir):
    """Force pad == eos: the reward must still come from the last attended token, i.e. the trailing newline/EOS."""
    scorer = Scorer.load(llama_dir, device="cpu")
    eos = scorer.tokenizer.eos_token_id
    ids = scorer.encoder.encode([scorer.render(p, r) for p, r in TEXTS])
    alone = torch.cat([_scores(scorer.model, scorer.tokenizer, [i], "right") for i in ids])
    with torch.inference_mode():
        padded_with_eos = scorer.model(*pad_sequences(ids, eos, "right"))
    torch.testing.assert_close(padded_with_eos, alone, atol=1e-5, rtol=1e-5)


def test_saved_tokenizer_pads_with_a_token_other_than_eos(llama_dir):
    tok = AutoTokenizer.from_pretrained(llama_dir)
    assert tok.pad_token_id != tok.eos_token_id


@pytest.mark.parametrize("fixture", ["llama_dir", "bert_dir"])
def test_plain_transformers_scores_equal_rmkit_scores(fixture, request):
    """TRL-style: AutoModel + AutoTokenizer, right padding, logits[:, 0] on the same rendered text."""
    model_dir = request.getfixturevalue(fixture)
    scorer = Scorer.load(model_dir, device="cpu")
    texts = [scorer.render(p, r) for p, r in TEXTS]
    theirs = plain_transformers_rewards(model_dir, texts, scorer.card.add_special_tokens)
    torch.testing.assert_close(theirs, torch.tensor(scorer.score_texts(texts), dtype=theirs.dtype), atol=1e-5, rtol=1e-5)


def test_model_dir_has_rmkit_json_with_scoring_settings(llama_dir):
    card = json.loads((llama_dir / "rmkit.json").read_text())
    assert {"format_version", "template", "max_length", "pooling", "reward_mean", "reward_std"} <= set(card)
    assert read_card(llama_dir).pooling == "last"


def test_save_and_load_round_trip_gives_identical_scores(llama_dir, tmp_path):
    from rmkit.model import save_model

    model, tokenizer, card = load_model(llama_dir)
    save_model(model, tokenizer, card, tmp_path / "copy")
    a = Scorer.load(llama_dir).score_texts(["hello world"])
    b = Scorer.load(tmp_path / "copy").score_texts(["hello world"])
    assert a == pytest.approx(b, abs=1e-6)


def test_lora_adapter_folder_holds_the_head_and_merges_to_equal_scores(llama_lora_dir, tmp_path):
    names = set(__import__("safetensors.torch").torch.load_file(llama_lora_dir / "adapter_model.safetensors"))
    assert any("score" in n for n in names), "the score head must be saved with the adapter"
    adapter = Scorer.load(llama_lora_dir)
    texts = [adapter.render(p, r) for p, r in TEXTS]
    merged_dir = merge_lora(llama_lora_dir, tmp_path / "merged")
    assert not (merged_dir / "adapter_config.json").exists()
    merged = Scorer.load(merged_dir)
    assert merged.card.finetune == "full"
    assert merged.score_texts(texts) == pytest.approx(adapter.score_texts(texts), abs=1e-4)
    with adapter.model.hf.disable_adapter():  # the adapter really changes the scores, so the equality means something
        assert adapter.score_texts(texts) != pytest.approx(merged.score_texts(texts), abs=1e-3)


def test_merging_a_full_model_is_an_error(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="no adapter to merge"):
        merge_lora(llama_dir, tmp_path / "x")


def test_missing_rmkit_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an rmkit model directory"):
        read_card(tmp_path)


def test_freezing_lower_layers_stops_their_gradients():
    from rmkit.build import load_for_training
    from rmkit.config import ModelConfig

    model, _, _ = load_for_training(ModelConfig(path="tiny-llama", freeze_layers=1), max_length=32)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any("layers.0." in n for n in frozen) and any("embed_tokens" in n for n in frozen)
    assert not any("layers.1." in n for n in frozen) and not any("score" in n for n in frozen)
