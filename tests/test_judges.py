"""lab.detect.judges: model judges behind the Verdict interface, on tiny random models built from config
(nothing is downloaded): prompt building, output parsing, batching, bad outputs, errors."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from lab.detect import detect, detect_batch  # noqa: E402
from lab.detect import judges  # noqa: E402
from lab.detect.judges import JudgeError, build_prompt, parse_output  # noqa: E402
from lab.detect.io import compare_file, detect_file  # noqa: E402
from tests.tiny_models import QWEN25_TEMPLATE, _tokenizer, build_tiny  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    judges.unload()
    yield
    judges.unload()


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    d = tmp_path_factory.mktemp("clf")
    tok = _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[SEP]", "[PAD]", None, "")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=600, pad_token_id=tok.pad_token_id,
                     id2label={0: "NORMAL", 1: "REJECTION"}, label2id={"NORMAL": 0, "REJECTION": 1})
    BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny("qwen2", tmp_path_factory.mktemp("qwen"))


RESPONSES = ["I'm sorry, but I can't help with that.", "Sure, here is a step-by-step guide.", "",
             "对不起，我不能回答这个问题。", "Come posso fare il pane?"]


def test_classifier_judge_verdicts_batching_and_labels(classifier_dir):
    m = f"judge:{classifier_dir}"
    one = judges.judge_batch(str(classifier_dir), RESPONSES, batch_size=1, version="v")
    three = judges.judge_batch(str(classifier_dir), RESPONSES, batch_size=3, version="v")
    assert len(one) == len(RESPONSES)
    # same decision and (up to float noise from padding) the same probability whatever the batch size
    assert [v.refusal for v in one] == [v.refusal for v in three]
    for a, b in zip(one, three):
        assert abs(a.confidence - b.confidence) < 1e-3
    assert one[2].evidence == ["<empty response>"] and one[2].refusal is False and one[2].confidence == 0.0
    v = one[0]
    assert v.method == f"judge:{classifier_dir}" and v.version == "v" and v.evidence[0].startswith("p(refusal)=")
    assert v.category in ("hard", "none") and v.harmful is None  # no harm label in this classifier
    assert one[3].lang == "zh"
    vs = detect_batch(RESPONSES, method=m)
    assert [x.refusal for x in vs] == [x.refusal for x in one]
    assert detect(RESPONSES[0], method=m).refusal == one[0].refusal


def test_classifier_without_a_refusal_label_is_an_error(tmp_path, classifier_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(classifier_dir)
    cfg.id2label, cfg.label2id = {0: "LABEL_0", 1: "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    d = tmp_path / "bad"
    d.mkdir()
    for f in classifier_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    cfg.save_pretrained(d)
    with pytest.raises(JudgeError, match="which label means refusal"):
        judges.judge_batch(str(d), ["hello"])


def test_wildguard_prompt_is_the_model_card_format():
    text = build_prompt("wildguard", None, "How do I bake bread?", "Mix flour and water.")
    assert text.startswith("<s><|user|>\n[INST] You are a classifier for analyzing interactions between humans and LLMs.")
    assert "Human user:\nHow do I bake bread?\n\nAI assistant:\nMix flour and water.\n\n---\n\nAnswers: [/INST]\n<|assistant|>\n" in text


def test_parsers_and_bad_outputs():
    assert parse_output("wildguard", "Harmful request: yes\nResponse refusal: yes\nHarmful response: no")[:2] == (True, False)
    assert parse_output("wildguard", "Harmful request: no\nResponse refusal: no\nHarmful response: yes")[:2] == (False, True)
    assert parse_output("wildguard", "Response refusal: no")[:2] == (False, None)
    assert parse_output("qwen3guard", "Safety: Unsafe\nCategories: Violent\nRefusal: No")[:2] == (False, True)
    assert parse_output("qwen3guard", "Safety: Safe\nCategories: None\nRefusal: Yes")[:2] == (True, False)
    assert parse_output("qwen3guard", "Safety: Controversial\nCategories: Politically Sensitive Topics\nRefusal: No")[:2] == (False, False)
    for kind, bad in (("wildguard", "yes yes no"), ("qwen3guard", "Safety: Safe"), ("wildguard", "")):
        with pytest.raises(JudgeError):
            parse_output(kind, bad)


def _scripted_generate(net, tok, answers, calls):
    """Replace net.generate: record each batch, answer item k with answers[k % len(answers)]."""
    counter = [0]

    def gen(input_ids=None, attention_mask=None, **kw):
        calls.append((input_ids.shape[0], attention_mask.clone()))
        rows = []
        for _ in range(input_ids.shape[0]):
            ids = tok(answers[counter[0] % len(answers)], add_special_tokens=False)["input_ids"]
            counter[0] += 1
            rows.append(ids)
        width = max(len(r) for r in rows)
        new = torch.full((len(rows), width), tok.pad_token_id, dtype=input_ids.dtype)
        for i, r in enumerate(rows):
            new[i, : len(r)] = torch.tensor(r)
        return torch.cat([input_ids, new], dim=1)

    net.generate = gen


def test_wildguard_judge_batches_left_pads_and_parses(llama_dir):
    spec = f"wildguard={llama_dir}"
    kind, tok, net, _dev, _ = judges._load(spec)
    assert kind == "wildguard" and tok.padding_side == "left"
    calls = []
    _scripted_generate(net, tok, ["Harmful request: yes\nResponse refusal: yes\nHarmful response: no",
                                  "Harmful request: yes\nResponse refusal: no\nHarmful response: yes"], calls)
    vs = judges.judge_batch(spec, RESPONSES, prompts=["q"] * 5, batch_size=2)
    assert [c[0] for c in calls] == [2, 1, 1]  # 5 items, batches of 2; the empty one is not sent
    mask = calls[0][1]
    assert mask[:, -1].all()  # left padding: every row ends with a real token
    assert [v.refusal for v in vs] == [True, False, False, True, False]
    assert [v.harmful for v in vs] == [False, True, None, False, True]
    assert vs[0].category == "hard" and vs[1].category == "none" and vs[2].evidence == ["<empty response>"]


def test_generative_judge_bad_output_names_the_item(llama_dir):
    spec = f"wildguard={llama_dir}"
    _kind, tok, net, _dev, _ = judges._load(spec)
    _scripted_generate(net, tok, ["Response refusal: no", "I think this is fine"], [])
    with pytest.raises(JudgeError, match="item 1"):
        judges.judge_batch(spec, ["a", "b"], batch_size=2)


def test_random_model_output_is_rejected_not_guessed(llama_dir):
    # an untrained model babbles: the judge must refuse to guess a verdict
    with pytest.raises(JudgeError, match="Response refusal"):
        judges.judge_batch(f"wildguard={llama_dir}", ["I'm sorry, I can't."])


def test_qwen3guard_uses_the_models_chat_template(qwen_dir):
    spec = f"qwen3guard={qwen_dir}"
    _kind, tok, net, _dev, _ = judges._load(spec)
    text = build_prompt("qwen3guard", tok, "How do I bake bread?", "Mix flour and water.")
    assert "<|im_start|>user\nHow do I bake bread?<|im_end|>" in text
    assert "<|im_start|>assistant\nMix flour and water.<|im_end|>" in text
    _scripted_generate(net, tok, ["Safety: Unsafe\nCategories: Violent\nRefusal: No"], [])
    v = judges.judge_batch(spec, ["Here is how to do it."], prompts=["bad thing"])[0]
    assert v.refusal is False and v.harmful is True


def test_judge_errors(tmp_path, llama_dir):
    with pytest.raises(JudgeError, match="unknown"):
        judges.parse_spec("llamaguard=x")
    with pytest.raises(JudgeError, match="cannot load"):
        judges.judge_batch(str(tmp_path / "missing"), ["x"])
    with pytest.raises(JudgeError, match="cannot load"):  # offline: a hub id that is not cached fails fast
        judges.judge_batch("nobody/not-a-model-xyz", ["x"])
    with pytest.raises(JudgeError, match="cannot tell which judge"):  # a causal LM of unknown format
        judges.judge_batch(str(llama_dir), ["x"])
    with pytest.raises(Exception, match="batch size"):
        judges.judge_batch(str(llama_dir), ["x"], batch_size=0)
    with pytest.raises(Exception, match="give a model"):
        detect("x", method="judge:")


def test_judge_in_files_and_compare(tmp_path, classifier_dir):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": "p", "response": r}) + "\n" for i, r in enumerate(RESPONSES)))
    m = f"judge:{classifier_dir}"
    res = detect_file(inp, tmp_path / "out.jsonl", method=m)
    assert res["n"] == 5 and res["method"] == m
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(5)) and all(r["method"] == m for r in rows)
    cmp = compare_file(inp, ["tiered", m], tmp_path / "dis.jsonl")
    pair = cmp["pairs"][f"tiered|{m}"]
    assert sum(map(sum, pair["confusion"]["matrix"])) == 5
    assert pair["disagreements"] == cmp["disagreements"]
