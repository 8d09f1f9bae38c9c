"""Tiny random models of real families (Qwen2, Llama) built from config, with those families' chat
templates written out here — the real-model code path, tested without downloading anything."""
from __future__ import annotations

from pathlib import Path

import torch

# Qwen2.5-Instruct's template (the branch without tools, verbatim in behaviour).
QWEN25_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Llama-3.1-Instruct's template (without tool calling).
LLAMA31_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

CORPUS = ["How do I bake bread?", "I'm sorry, but I can't help with that.", "Sure, here is a step-by-step guide.",
          "你好，我想烤面包。", "パンを焼く方法を教えて", "मुझे रोटी बनाने का तरीका बताइए।", "Come posso fare il pane?"] * 20


def _tokenizer(specials: list[str], eos: str, pad: str, bos: str | None, template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=eos, pad_token=pad, bos_token=bos)
    tok.chat_template = template
    return tok


def build_tiny(family: str, path: Path) -> Path:
    """Save a tiny random `family` ('qwen2' | 'llama') model + tokenizer to `path` (GQA: 4 q heads, 2 kv heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)
    if family == "qwen2":
        tok = _tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", "<|endoftext|>", None, QWEN25_TEMPLATE)
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id, tie_word_embeddings=True, **common))
    elif family == "llama":
        tok = _tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                         "<|eot_id|>", "<|end_of_text|>", "<|begin_of_text|>", LLAMA31_TEMPLATE)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                             eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|end_of_text|>")],
                                             pad_token_id=tok.pad_token_id, **common))
    else:
        raise ValueError(family)
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
