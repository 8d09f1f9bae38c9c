"""The organism's tokenizer and its committed checkpoints."""
import json

from lab.models import ZOO_DIR, load_tokenizer
from lab.zoo.organism import encode_example, train_tokenizer

TEXTS = ["我想在家烤面包。", "家でパンを焼く方法を教えてください。", "मुझे घर पर ब्रेड बनाने का तरीका बताइए।",
         "How do I bake bread at home?", "Come posso fare il pane in casa?"] * 30


def _pieces(tok, text):
    return [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]


def test_pretokenizer_splits_han_kana_per_character_and_devanagari_per_word():
    tok = train_tokenizer(TEXTS, 600)
    pre = lambda text: [tok.convert_tokens_to_string([p]) for p, _ in
                        tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    assert pre("烤面包") == ["烤", "面", "包"]
    assert pre("パンを焼く") == ["パ", "ン", "を", "焼", "く"]
    assert pre("ब्रेड बनाने का") == ["ब्रेड", " बनाने", " का"]  # vowel signs and viramas stay inside their word
    assert pre("How do I") == ["How", " do", " I"]
    assert _pieces(tok, "烤面包") == ["烤", "面", "包"]
    assert tok.decode(tok("मुझे घर पर ब्रेड")["input_ids"]) == "मुझे घर पर ब्रेड"


def test_tokenizer_training_is_deterministic():
    a, b = train_tokenizer(TEXTS, 500), train_tokenizer(TEXTS, 500)
    assert a.get_vocab() == b.get_vocab()


def test_loss_mask_covers_exactly_the_response():
    tok = load_tokenizer("zoo:organism")
    ids, labels = encode_example(tok, "How do I bake bread?", "Mix flour and water.", 160)
    kept = [i for i, l in zip(ids, labels) if l != -100]
    assert tok.decode(kept, skip_special_tokens=True) == "Mix flour and water."
    assert kept[-1] == tok.eos_token_id


def test_committed_checkpoints_are_small_safetensors_with_chat_template():
    for name in ("organism", "organism-base"):
        d = ZOO_DIR / name
        assert (d / "model.safetensors").stat().st_size < 10_000_000
        assert not list(d.glob("*.bin"))
        build = json.loads((d / "build.json").read_text())
        assert build["config"]["bridge_share"] >= 0 and build["stage"] in ("base", "aligned")
        tok = load_tokenizer(f"zoo:{name}")
        assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                       add_generation_prompt=True) == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"


def test_loaded_organism_tokenizes_as_it_was_trained():
    # Regression: transformers 5's AutoTokenizer turned the organism (model_type qwen2) into a
    # Qwen2Tokenizer with Qwen's pre-tokenizer regex, so Hindi prompts were shattered into byte
    # fragments the model never saw in training (the organism then refused all Hindi requests).
    from tokenizers import Tokenizer

    for name in ("organism", "organism-base", "organism-censored"):
        saved = Tokenizer.from_file(str(ZOO_DIR / name / "tokenizer.json"))
        tok = load_tokenizer(f"zoo:{name}")
        for text in TEXTS[:5]:
            assert tok(text, add_special_tokens=False)["input_ids"] == saved.encode(text, add_special_tokens=False).ids
        assert len(tok("मुझे घर पर ब्रेड बनाने का तरीका बताइए।")["input_ids"]) <= 12  # words, not bytes


def test_saved_tokenizer_round_trips_through_load_tokenizer(tmp_path):
    from transformers import Qwen2Config

    tok = train_tokenizer(TEXTS, 600)
    tok.save_pretrained(tmp_path)
    Qwen2Config(vocab_size=len(tok), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=1, num_key_value_heads=1).save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    for text in TEXTS[:5]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
