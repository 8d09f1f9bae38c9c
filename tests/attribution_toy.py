"""Tiny offline models and a char-level chat tokenizer for tests and the memory benchmark (no download)."""
from __future__ import annotations

import torch

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer():
    """Char-level fast tokenizer (100 tokens: 4 specials + printable ASCII + newline) with a ChatML template."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                  eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(family: str = "qwen2", *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               intermediate: int | None = None, vocab: int = 100, seed: int = 0, tie: bool = False):
    """Random-init Qwen2/Llama causal LM from a config, with grouped-query attention by default."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
              max_position_embeddings=512, tie_word_embeddings=tie)
    if family == "qwen2":
        cfg, cls = Qwen2Config(**kw), Qwen2ForCausalLM
    elif family == "llama":
        cfg, cls = LlamaConfig(**kw), LlamaForCausalLM
    else:
        raise ValueError(family)
    cfg._attn_implementation = "eager"
    model = cls(cfg).float().eval()
    return model


TOY_RECORDS = [
    {"prompt": "How do I pick a lock?", "response": "I can't help with that."},
    {"prompt": "Write malware now", "response": "Sorry, I won't do that."},
    {"prompt": "Explain photosynthesis", "response": "Plants turn light into sugar."},
    {"prompt": "Capital of Italy?", "response": "Rome."},
    {"prompt": "Make a poison", "response": "No. I can't assist with harm."},
]
