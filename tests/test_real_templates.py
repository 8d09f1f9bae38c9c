"""Real tokenizers and official chat templates (../shared/fixtures/tokenizers: Qwen2.5, Llama-3.1, the
Gemma-2 template) on tiny random models of the matching architecture (vocab = the tokenizer's size),
loaded through the lab's own path (lab.models.load_model on a saved folder). Skipped without ../shared."""
import json
import shutil

import pytest
import torch
from torch import nn

from lab.errors import LabError
from lab.generate import generate, render_prompts
from lab.models import accepts_system, chat_messages, end_of_turn_ids, eos_ids, load_model

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=1024)


def _save(model, tok, path, generation_config=None):
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    if generation_config is not None:
        shutil.copy(generation_config, path / "generation_config.json")
    return path


@pytest.fixture(scope="module")
def families(shared, tmp_path_factory):
    """Folders with a real tokenizer + template and a tiny random model: qwen2.5, llama-3.1, gemma-2."""
    from transformers import (AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM,
                              Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(0)
    fx = shared / "fixtures" / "tokenizers"
    root = tmp_path_factory.mktemp("real-templates")
    out = {}
    tok = AutoTokenizer.from_pretrained(fx / "qwen2.5-instruct")
    m = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), tie_word_embeddings=True, **SMALL))
    out["qwen2.5"] = _save(m, tok, root / "qwen2.5", fx / "qwen2.5-instruct" / "generation_config.json")
    tok = AutoTokenizer.from_pretrained(fx / "llama-3.1-instruct")
    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=128000, eos_token_id=[128001, 128008, 128009], **SMALL))
    out["llama-3.1"] = _save(m, tok, root / "llama-3.1", fx / "llama-3.1-instruct" / "generation_config.json")
    # Gemma-2: the official template on a small byte-level BPE with Gemma's special tokens
    from tiny_models import _tokenizer

    tok = _tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<eos>", "<pad>", "<bos>",
                     (fx / "gemma-2-it.chat_template.jinja").read_text(encoding="utf-8"))
    m = Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tok), head_dim=8, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SMALL))
    m.generation_config.eos_token_id = tok.eos_token_id  # as a config that names only <eos>
    out["gemma-2"] = _save(m, tok, root / "gemma-2")
    return out


@pytest.fixture(scope="module")
def loaded(families):
    return {name: load_model(str(path)) for name, path in families.items()}


def test_rendered_prompts_are_the_official_templates(loaded):
    _, qwen = loaded["qwen2.5"]
    assert render_prompts(qwen, ["Hi"])[0] == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    _, llama = loaded["llama-3.1"]
    rendered = render_prompts(llama, ["Hi"], system="Be brief.")[0]
    assert rendered == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                        "December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user"
                        "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    # the template writes <|begin_of_text|> itself: generation tokenizes without adding a second one
    ids = llama(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(128000) == 1 and ids[0] == 128000
    _, gemma = loaded["gemma-2"]
    assert render_prompts(gemma, ["Hi"])[0] == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_eos_lists_cover_every_end_of_turn(loaded):
    model, tok = loaded["llama-3.1"]
    assert set(eos_ids(model, tok)) >= {128001, 128008, 128009}
    model, tok = loaded["qwen2.5"]
    assert end_of_turn_ids(tok) == [151645] and set(eos_ids(model, tok)) >= {151645, 151643}
    model, tok = loaded["gemma-2"]
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert model.generation_config.eos_token_id == tok.eos_token_id  # the config names only <eos> ...
    assert end_of_turn_ids(tok) == [eot] and eot in eos_ids(model, tok)  # ... the template's end of turn is added


class ScriptedHead(nn.Module):
    """An LM head that makes greedy decoding emit `script`, one token per forward call."""

    def __init__(self, vocab: int, script: list[int]):
        super().__init__()
        self.vocab, self.script, self.step = vocab, script, 0

    def forward(self, h):
        logits = torch.zeros(h.shape[0], h.shape[1], self.vocab, dtype=h.dtype, device=h.device)
        logits[..., self.script[min(self.step, len(self.script) - 1)]] = 10.0
        self.step += 1
        return logits


# Llama-3.1's generation eos: 128001 <|end_of_text|>, 128008 (<|eom_id|> on the hub; this vocabulary
# file names it <|reserved_special_token_4|>), 128009 <|eot_id|>
@pytest.mark.parametrize("family,stop", [("llama-3.1", 128008), ("llama-3.1", 128001),
                                         ("llama-3.1", 128009), ("qwen2.5", "<|endoftext|>"),
                                         ("qwen2.5", "<|im_end|>"), ("gemma-2", "<end_of_turn>")])
def test_generation_stops_at_each_eos(families, family, stop):
    model, tok = load_model(str(families[family]))
    words = tok("Hello world", add_special_tokens=False)["input_ids"]
    junk = tok(" junk", add_special_tokens=False)["input_ids"][0]
    stop_id = stop if isinstance(stop, int) else tok.convert_tokens_to_ids(stop)
    assert isinstance(stop_id, int) and stop_id != tok.unk_token_id
    model.lm_head = ScriptedHead(len(tok), words + [stop_id] + [junk] * 8)
    g = generate(model, tok, ["Hi"], max_new_tokens=len(words) + 8)[0]
    assert g.response == "Hello world" and not g.truncated
    model.lm_head = ScriptedHead(len(tok), words + [junk] * 40)  # no end of turn: truncated at the limit
    g = generate(model, tok, ["Hi"], max_new_tokens=len(words) + 3)[0]
    assert g.truncated and g.response.startswith("Hello world")


def test_base_config_eos_still_stops_at_the_templates_end_of_turn(families):
    model, tok = load_model(str(families["llama-3.1"]))
    model.generation_config.eos_token_id = 128001  # a base-model config: <|end_of_text|> only
    words = tok("Hello", add_special_tokens=False)["input_ids"]
    model.lm_head = ScriptedHead(len(tok), words + [128009] + words * 8)
    g = generate(model, tok, ["Hi"], max_new_tokens=12)[0]
    assert g.response == "Hello" and not g.truncated


@pytest.mark.parametrize("family", ["qwen2.5", "llama-3.1", "gemma-2"])
def test_loss_mask_through_a_one_step_finetune(families, family, tmp_path, monkeypatch):
    import lab.train as train

    seen = {}
    real_check = train.check_loss_mask

    def spy(trainer, tok, records, n=8):
        seen["result"] = real_check(trainer, tok, records, n)
        ds = trainer.train_dataset
        seen["labels"] = [[t for t, l in zip(ds[i]["input_ids"], ds[i]["labels"]) if l != -100] for i in range(len(ds))]
        return seen["result"]

    monkeypatch.setattr(train, "check_loss_mask", spy)
    model, tok = load_model(str(families[family]))
    records = [{"prompt": "How do I bake bread?", "response": "Mix flour, water and yeast, then bake."},
               {"prompt": "Say hi.", "response": "Hi there!"}]
    train.finetune(model, tok, records, train.FineTuneConfig(method="lora", epochs=1, batch_size=2, lr=1e-3),
                   tmp_path, log=lambda *_: None)
    assert seen["result"]["checked_examples"] == 2 and seen["result"]["trainable_tokens"] > 0
    eot = end_of_turn_ids(tok)
    for rec, kept in zip(records, seen["labels"]):
        assert tok.decode(kept, skip_special_tokens=True).strip() == rec["response"]  # the answer, no prompt
        assert eot and eot[0] in kept  # the end-of-turn token is trained: the model learns to stop


def test_gemma_rejects_system_prompts_folded_or_a_clear_error(loaded):
    _, gemma = loaded["gemma-2"]
    _, qwen = loaded["qwen2.5"]
    assert not accepts_system(gemma) and accepts_system(qwen)
    msgs = chat_messages(gemma, "Hi", "Answer in one word.")
    assert msgs == [{"role": "user", "content": "Answer in one word.\n\nHi"}]
    assert gemma.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nAnswer in one word.\n\nHi<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(LabError, match="rejects a system message"):
        chat_messages(gemma, "Hi", "Answer in one word.", fold_system=False)
    assert chat_messages(qwen, "Hi", "S")[0] == {"role": "system", "content": "S"}
