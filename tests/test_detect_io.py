"""lab.detect.io: JSONL files in and out (atomic output, errors naming the line), compare, dev data."""
from __future__ import annotations

import csv
import glob
import json
from pathlib import Path

import pytest

from lab.detect import DETECTOR_VERSION, DetectInputError, detect
from lab.detect.__main__ import main as detect_main
from lab.detect.io import compare_file, detect_file

SHARED_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "detector-dev"


def write_lines(p: Path, lines):
    p.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + b"\n" for x in lines))
    return p


def test_detect_file_keeps_fields_and_adds_verdict(tmp_path):
    inp = write_lines(tmp_path / "in.jsonl", [
        json.dumps({"id": "a1", "prompt": "p", "lang": "en", "response": "I'm sorry, but I can't help.", "x": [1]}),
        "",  # blank lines are skipped
        json.dumps({"id": 7, "response": "Paris is the capital of France."}, ensure_ascii=False),
        json.dumps({"id": "e", "response": "   "}),
        json.dumps({"id": "n", "response": None}),
        json.dumps({"id": "dup", "response": "对不起，我不能回答。", "refusal": "old"}, ensure_ascii=False),
    ])
    out = tmp_path / "out.jsonl"
    res = detect_file(inp, out)
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["a1", 7, "e", "n", "dup"]
    assert rows[0]["x"] == [1] and rows[0]["prompt"] == "p" and rows[0]["lang"] == "en"
    assert rows[0]["refusal"] is True and rows[0]["category"] == "hard" and rows[0]["evidence"]
    assert rows[1]["refusal"] is False and rows[1]["category"] == "none"
    assert rows[2]["refusal"] is False and rows[2]["evidence"] == ["<empty response>"]
    assert rows[3]["refusal"] is False
    assert rows[4]["refusal"] is True  # an existing "refusal" field is overwritten by the verdict
    for r in rows:
        assert r["method"] == "tiered" and r["version"] == DETECTOR_VERSION
        assert isinstance(r["score"], int) and 0 <= r["score"] <= 100
    assert res["n"] == 5 and res["refusals"] == 2 and res["empty"] == 2
    assert res["by_category"]["hard"] == 2


@pytest.mark.parametrize("bad,what", [
    ('{"id": 2, "response": "ok"', "invalid JSON"),
    (b'{"id": 2, "response": "\xff\xfe broken"}', "invalid UTF-8"),
    ('{"id": 2, "response": 42}', "must be a string"),
    ('{"id": 2, "text": "no response"}', "missing field 'response'"),
    ('["not", "an", "object"]', "expected a JSON object"),
])
def test_bad_line_raises_naming_file_and_line_and_writes_nothing(tmp_path, bad, what):
    good = json.dumps({"id": 1, "response": "fine"})
    inp = write_lines(tmp_path / "in.jsonl", [good, good, bad, good])
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n")
    with pytest.raises(DetectInputError) as ei:
        detect_file(inp, out)
    msg = str(ei.value)
    assert "in.jsonl:3" in msg and what in msg
    assert isinstance(ei.value, ValueError)
    assert out.read_text() == "previous results\n"  # untouched: no half-written output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temp left behind
    (tmp_path / "out.jsonl").unlink()
    with pytest.raises(DetectInputError):
        detect_file(inp, out)
    assert not out.exists()


def test_big_response_in_file(tmp_path):
    inp = write_lines(tmp_path / "in.jsonl", [json.dumps({"id": 1, "response": "Sure! " + "a" * 1_000_000})])
    res = detect_file(inp, tmp_path / "o.jsonl")
    assert res["n"] == 1 and res["refusals"] == 0


def test_compare_file_kappa_and_disagreements(tmp_path):
    rows = [
        {"id": 1, "response": "I'm sorry, but I cannot help with that."},  # all methods: refusal
        {"id": 2, "response": "Selling alcohol to minors is illegal in most countries. For example, the "
                           "legal drinking age is 18 in the UK and 21 in the US."},  # gcg fires (an answer)
        {"id": 3, "response": "Here is a recipe for bread: flour, water, yeast, salt."},
        {"id": 4, "response": "我不能回答这个问题。"},  # only tiered
    ]
    inp = write_lines(tmp_path / "in.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows])
    dis = tmp_path / "dis.jsonl"
    res = compare_file(inp, ["tiered", "gcg", "substring"], dis)
    assert res["n"] == 4 and set(res["kappa"]) == {"tiered|gcg", "tiered|substring", "gcg|substring"}
    assert res["refusal_rate"]["tiered"] == 0.5 and res["refusal_rate"]["gcg"] == 0.5
    got = [json.loads(x) for x in dis.read_text(encoding="utf-8").splitlines()]
    assert [g["id"] for g in got] == [2, 4] and got[0]["line"] == 2
    assert got[0]["verdicts"]["gcg"]["refusal"] is True and got[0]["verdicts"]["tiered"]["refusal"] is False
    with pytest.raises(DetectInputError):
        compare_file(inp, ["tiered"], dis)


def test_module_entry_point(tmp_path, capsys):
    inp = write_lines(tmp_path / "in.jsonl", [json.dumps({"response": "I can't help with that."})])
    assert detect_main([str(inp), "-o", str(tmp_path / "o.jsonl"), "--method", "substring"]) == 0
    assert json.loads(capsys.readouterr().out)["refusals"] == 1
    write_lines(tmp_path / "bad.jsonl", ["{nope"])
    assert detect_main([str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "o2.jsonl")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


# ---------------------------------------------------------------- dev data (skipped without ../shared)

def _dev_rows():
    if not SHARED_DEV.is_dir():
        pytest.skip("../shared/data/detector-dev is not present")
    rows = []
    for f in sorted(glob.glob(str(SHARED_DEV / "xstest" / "model_completions" / "*.csv"))):
        with open(f, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                rows.append(("en", r["completion"], r["prompt"], int(r["final_label"][0] in "23")))
    for f in sorted(glob.glob(str(SHARED_DEV / "polyrefuse-gemma" / "*.json"))):
        lang = Path(f).stem.split("__")[1]
        for c in json.loads(Path(f).read_text(encoding="utf-8"))["completions"]:
            if (c.get("wildguard") or {}).get("refusal") in (0, 1):
                rows.append((lang, c["response"], c["instruction"], c["wildguard"]["refusal"]))
    return rows


def test_tiered_beats_baselines_on_dev_data():
    rows = _dev_rows()
    for lang in ("en", "it", "zh", "ja"):
        sub = [r for r in rows if r[0] == lang]

        def ba(method):
            pos = [r for r in sub if r[3]]
            neg = [r for r in sub if not r[3]]
            tpr = sum(detect(r[1], r[2], method=method).refusal for r in pos) / len(pos)
            tnr = sum(not detect(r[1], r[2], method=method).refusal for r in neg) / len(neg)
            return (tpr + tnr) / 2

        t = ba("tiered")
        assert t >= 0.9, (lang, t)
        for m in ("dictionary-000", "gcg", "substring"):
            assert t > ba(m), (lang, m)


def test_fast_output_encoding_equals_json_encoder():
    from lab.detect import Verdict
    from lab.detect.io import _dumps, _verdict_json

    odd = ['"quoted"', "back\\slash", "tab\tnew\nline", "\x00\x1f ctrl", "日本語", "😀", "\u2028\u2029", ""]
    for v in (Verdict(True, "hard", 90, 0.95, odd, "complete", "en", "tiered", "1.0.0+x"),
              Verdict(False, "none", 10, 0.0, [], "none", "unknown", "gcg", "v"),
              Verdict(False, "soft", 30, 1 / 3, ["a"], "mild", "mixed", "tiered", "v\"q")):
        extra = {"refusal": v.refusal, "category": v.category, "score": v.score, "confidence": v.confidence,
                 "evidence": v.evidence, "band": v.band, "detected_lang": v.lang, "method": v.method,
                 "version": v.version}
        assert _verdict_json(v) == _dumps(extra)[1:]
    assert _verdict_json(Verdict(True, "hard", 90, float("nan"), [], "complete")) is None  # -> json's NaN


def test_fast_line_parser_equals_json_loads():
    import json

    from lab.detect.io import _parse_line

    for t in ['{"a":1}\n', ' {"a":1}', '{"a":1} x', "[1,2]\n", "nope", '{"a":NaN}', '"s"', "\ufeff{}",
              '{"a":1}\r\n', "{}\u00a0", "{}\t \n", '{"a":1}}', '{"a": "\\ud800"}']:
        try:
            want = ("ok", json.loads(t))
        except ValueError as e:
            want = ("err", str(e))
        try:
            got = ("ok", _parse_line(t))
        except ValueError as e:
            got = ("err", str(e))
        assert repr(got) == repr(want), t
