"""Any Hugging Face reward model in: plain transformers *ForSequenceClassification folders (no rmkit.json) of every
family rmkit accepts score exactly as plain transformers scores them, with left and right padding; the reading rule
(rmkit.card) is checked field by field; what cannot be read is refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import GEMMA_TEMPLATE, QWEN_TEMPLATE, save_hf_model
from rmkit.card import CARD_FILE, read_card
from rmkit.encoding import pad_sequences
from rmkit.model import import_model, position_ids
from rmkit.scoring import Scorer

PAIRS = [("Name a prime.", "7"), ("What is the capital of France?", "Paris, a city on the Seine."),
         ("Hi", "Hello! How can I help you today? I can answer questions.")]

CASES = [("llama", "smollm2"), ("llama", None), ("qwen2", QWEN_TEMPLATE), ("gemma", GEMMA_TEMPLATE), ("gpt2", None),
         ("bert", None), ("roberta", None), ("xlm-roberta", None), ("deberta-v2", None)]


def plain_transformers(model_dir, texts, add_special_tokens, output=0):
    """Scores with nothing of rmkit: AutoModel + AutoTokenizer, one text at a time (no padding) and right-padded."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        single = [hf(**tok(t, add_special_tokens=add_special_tokens, return_tensors="pt")).logits[0, output].item()
                  for t in texts]
        batch = tok(texts, padding=True, padding_side="right", add_special_tokens=add_special_tokens,
                    return_tensors="pt")
        batched = hf(**batch).logits[:, output].tolist()
    return single, batched


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hf")


@pytest.mark.parametrize(("family", "template"), CASES, ids=[f"{f}-{'chat' if t else 'plain'}" for f, t in CASES])
def test_rmkit_reward_equals_plain_transformers_with_left_and_right_padding(root, family, template):
    from transformers import AutoTokenizer

    from rmkit.backbones import resolve

    if template == "smollm2":
        template = AutoTokenizer.from_pretrained(resolve("tiny-llama")).chat_template
    model_dir = save_hf_model(root, family, chat_template=template)
    assert not (model_dir / CARD_FILE).exists()
    scorer = Scorer.load(model_dir, device="cpu")
    texts = [scorer.render(p, r) for p, r in PAIRS]
    if template:  # the model's own chat template, as its tokenizer applies it
        tok = AutoTokenizer.from_pretrained(model_dir)
        messages = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in PAIRS]
        assert texts == [tok.apply_chat_template(m, tokenize=False) for m in messages]
    single, batched = plain_transformers(model_dir, texts, scorer.card.add_special_tokens)
    right = scorer.score_texts(texts)
    ids, mask = pad_sequences(scorer.encoder.encode(texts), scorer.tokenizer.pad_token_id, side="left")
    with torch.inference_mode():
        left = scorer.model(ids, mask).tolist()
    assert right == pytest.approx(single, abs=1e-4)
    assert left == pytest.approx(single, abs=1e-4)
    assert batched == pytest.approx(single, abs=1e-4)
    assert max(single) - min(single) > 1e-3  # the texts really get different rewards


@pytest.mark.parametrize(("family", "pooling", "template", "specials", "max_length"),
                         [("llama", "last", "chat", False, 2048), ("gpt2", "last", "plain", True, 1024),
                          ("bert", "cls", "plain", True, 512), ("roberta", "cls", "plain", True, 512),
                          ("deberta-v2", "cls", "plain", True, 512)])
def test_reading_rule_gives_the_models_own_pooling_template_and_length(root, family, pooling, template, specials,
                                                                        max_length):
    from transformers import AutoConfig, AutoTokenizer

    from rmkit.card import infer_card

    chat = QWEN_TEMPLATE if template == "chat" else None
    model_dir = save_hf_model(root, family, chat_template=chat, seed=1)
    config = AutoConfig.from_pretrained(model_dir)
    if family == "llama":
        config.max_position_embeddings = 2048
    card = infer_card(config, AutoTokenizer.from_pretrained(model_dir), str(model_dir))
    assert (card.pooling, card.template, card.add_special_tokens, card.max_length) == (pooling, template, specials,
                                                                                       max_length)
    assert (card.labels, card.reward_index, card.reward_mean, card.reward_std) == ([], 0, 0.0, 1.0)


def test_roberta_position_ids_start_after_padding_idx():
    """RoBERTa numbers tokens from padding_idx + 1 and gives pads padding_idx: mask [0, 1, 1], pad 1 → [1, 2, 3]."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    hf = RobertaForSequenceClassification(RobertaConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                        num_attention_heads=2, intermediate_size=8, pad_token_id=1))
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    assert position_ids(hf, mask).tolist() == [[1, 2, 3], [2, 3, 1]]
    ids = torch.tensor([[1, 5, 6], [5, 6, 1]])
    assert position_ids(hf, mask)[1].tolist()[:2] == hf.roberta.embeddings.create_position_ids_from_input_ids(
        ids, 1)[1].tolist()[:2]


def test_encoder_decoder_models_are_refused_with_the_reason(root):
    model_dir = save_hf_model(root, "t5")
    with pytest.raises(ValueError, match="encoder-decoder model \\(t5\\)"):
        Scorer.load(model_dir, device="cpu")


def test_a_causal_lm_without_a_trained_head_is_refused(root):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rmkit.backbones import resolve

    out = root / "causal"
    tok = AutoTokenizer.from_pretrained(resolve("tiny-llama"))
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(out)
    tok.save_pretrained(out)
    with pytest.raises(ValueError, match="no trained reward head"):
        Scorer.load(out, device="cpu")


def test_named_outputs_need_reward_label_and_then_score_that_column(root):
    from rmkit.card import ImportOptions

    labels = {0: "helpfulness", 1: "correctness", 2: "verbosity"}
    model_dir = save_hf_model(root, "llama", seed=2, num_labels=3, id2label=labels)
    with pytest.raises(ValueError, match="3 outputs \\(helpfulness, correctness, verbosity\\)"):
        Scorer.load(model_dir, device="cpu")
    out = import_model(str(model_dir), root / "imported-3", ImportOptions(reward_label="correctness"))
    card = read_card(out)
    assert card.labels == ["helpfulness", "correctness", "verbosity"] and card.reward_index == 1
    scorer = Scorer.load(out, device="cpu")
    texts = [scorer.render(p, r) for p, r in PAIRS]
    single, _ = plain_transformers(model_dir, texts, scorer.card.add_special_tokens, output=1)
    assert scorer.score_texts(texts) == pytest.approx(single, abs=1e-4)
    attributes = scorer.score_attributes(*zip(*PAIRS, strict=True))
    assert list(attributes) == ["helpfulness", "correctness", "verbosity"]
    assert attributes["correctness"] == pytest.approx(single, abs=1e-4)
    verbosity, _ = plain_transformers(model_dir, texts, scorer.card.add_special_tokens, output=2)
    assert attributes["verbosity"] == pytest.approx(verbosity, abs=1e-4)


def test_rmkit_import_writes_rmkit_json_once_and_scores_the_same(root, hf_llama_dir):
    from rmkit.cli import main

    out = root / "imported"
    assert main(["import", str(hf_llama_dir), str(out), "--max-length", "256"]) == 0
    card = json.loads((out / CARD_FILE).read_text())
    assert card["max_length"] == 256 and card["pooling"] == "last" and card["template"] == "chat"
    texts = ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"]
    assert Scorer.load(out, device="cpu").score_texts(texts) == pytest.approx(
        Scorer.load(hf_llama_dir, device="cpu").score_texts(texts), abs=1e-6)
    assert main(["import", str(out), str(root / "again")]) == 2  # already an rmkit directory


def test_a_separate_tokenizer_path_is_used(root, hf_roberta_dir):
    from rmkit.backbones import resolve

    scorer = Scorer.load(hf_roberta_dir, device="cpu", tokenizer=resolve("tiny-bert"))
    assert scorer.tokenizer.name_or_path == resolve("tiny-bert")


@pytest.mark.parametrize(("dtype", "tolerance"), [("bf16", 0.1), ("int8", 0.1)])
def test_lower_precision_scores_stay_close_to_fp32(hf_llama_dir, dtype, tolerance):
    texts = ["Hello there, how are you?", "A longer answer about prime numbers: 2, 3, 5, 7 and 11."]
    fp32 = Scorer.load(hf_llama_dir, device="cpu").score_texts(texts)
    low = Scorer.load(hf_llama_dir, device="cpu", dtype=dtype).score_texts(texts)
    assert low == pytest.approx(fp32, abs=tolerance)


def test_unknown_dtype_and_int8_off_cpu_are_refused():
    from rmkit.scoring import torch_dtype

    with pytest.raises(ValueError, match="choose one of auto, fp32, bf16, fp16, int8"):
        torch_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="CPU scoring"):
        torch_dtype("int8", torch.device("cuda"))
    assert torch_dtype("auto", torch.device("cpu")) == torch.float32
