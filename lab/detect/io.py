"""JSONL in -> verdicts -> JSONL out, for `lab detect` (wired into lab/cli.py by the lead).

Input: one JSON object per line with a "response" field; "prompt" and "lang" are used when present;
every other field (``id`` included) is copied unchanged. Blank lines are skipped.
Output: the same objects plus refusal, category, score, confidence, evidence, method, version
(and band, lang is NOT overwritten: the detected language goes to "detected_lang").

Errors (DetectInputError, a ValueError; the CLI exits with code 2) name the file and the 1-based line:
invalid UTF-8, invalid JSON, a line that is not an object, a missing "response", a response that is
neither a string nor null. Output is written to a temporary file in the destination folder and moved
into place with os.replace only after the whole input was processed, so an error never leaves a
partial or half-written output (an existing output file is left untouched).
"""
from __future__ import annotations

import json
import contextlib
import os
import tempfile
from pathlib import Path

from . import CATEGORIES, DETECTOR_VERSION, JUDGE_PREFIX, DetectInputError, _check_method, detect, detect_batch
from .compare import agreement_report

__all__ = ["detect_file", "compare_file", "DetectInputError", "iter_records"]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.loads
_scan_once = json.JSONDecoder().scan_once  # the C scanner behind json.loads, without its wrapper


def _parse_line(line: str):
    """json.loads(line) for the usual line (an object, then only whitespace), faster; anything else
    goes to json.loads itself, so results and error messages are exactly json.loads'."""
    try:
        obj, end = _scan_once(line, 0)
    except StopIteration:
        return _loads(line)
    if end == len(line) or not line[end:].strip(" \t\n\r"):  # JSON whitespace only
        return obj
    return _loads(line)


_OUT_KEYS = ("refusal", "category", "score", "confidence", "evidence", "band", "detected_lang", "method",
             "version")
_OUT_KEY_SET = frozenset(_OUT_KEYS)
_enc = json.encoder.encode_basestring  # what JSONEncoder(ensure_ascii=False) uses for strings
_TAILS: dict = {}


def _verdict_json(v) -> str:
    """`_dumps(verdict fields)[1:]` (the object without its '{'), built directly: the same bytes, faster."""
    c = v.confidence
    r = v.refusal
    if type(c) is not float or not (-1e300 < c < 1e300) or type(v.score) is not int or type(r) is not bool:
        return None
    tail = _TAILS.get((v.method, v.version))
    if tail is None:
        tail = _TAILS[(v.method, v.version)] = f',"method":{_enc(v.method)},"version":{_enc(v.version)}}}'
    try:
        ev = ",".join(map(_enc, v.evidence))
        return (f'"refusal":{"true" if r else "false"},"category":{_enc(v.category)},"score":{v.score!r},'
                f'"confidence":{c!r},"evidence":[{ev}],"band":{_enc(v.band)},"detected_lang":{_enc(v.lang)}'
                + tail)
    except TypeError:
        return None


def iter_records(input_path, with_line: bool = False):
    """Yield (line_number, record) for each non-blank line; raise DetectInputError naming the line."""
    name = os.fspath(input_path)
    try:
        fh = open(name, "rb")
    except OSError as e:
        raise DetectInputError(f"{name}: cannot open input: {e.strerror}") from None
    with fh:
        for no, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DetectInputError(f"{name}:{no}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
            if no == 1 and line.startswith("\ufeff"):
                line = line[1:]
            if not line or line.isspace():
                continue
            try:
                rec = _parse_line(line)
            except ValueError as e:
                raise DetectInputError(f"{name}:{no}: invalid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise DetectInputError(f"{name}:{no}: expected a JSON object, got {type(rec).__name__}")
            if "response" not in rec:
                raise DetectInputError(f"{name}:{no}: missing field 'response'")
            r = rec["response"]
            if r is not None and not isinstance(r, str):
                raise DetectInputError(
                    f"{name}:{no}: field 'response' must be a string or null, got {type(r).__name__}"
                )
            yield (no, rec, line) if with_line else (no, rec)


@contextlib.contextmanager
def _atomic_output(output_path):
    """Yield (path, file handle) of a temp file beside output_path; on success it is renamed into place,
    on any error it is removed (readers never see a half-written output)."""
    out = Path(output_path)
    d = out.parent if str(out.parent) else Path(".")
    if not d.is_dir():
        raise DetectInputError(f"{out}: output folder {d} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=d)
    fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
    try:
        yield out, fh
        fh.close()
        os.replace(tmp, out)
    except BaseException:
        fh.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def detect_file(input_path, output_path, method: str = "tiered") -> dict:
    """Judge every line of a JSONL file; write the annotated lines atomically; return summary counts."""
    _check_method(method)
    if method.startswith(JUDGE_PREFIX):
        return _judge_file(input_path, output_path, method)
    counts = {c: 0 for c in CATEGORIES}
    n = refusals = empty = 0
    no_out_keys = _OUT_KEY_SET.isdisjoint

    def judged(chunk):  # (rec, line) list -> lines to write; verdicts of a chunk in one detect_batch
        nonlocal n, refusals, empty
        resps = [rec["response"] for rec, _line in chunk]
        prompts = [p if isinstance(p := rec.get("prompt"), str) else None for rec, _line in chunk]
        hints = [h if isinstance(h := rec.get("lang"), str) else None for rec, _line in chunk]
        out_lines = []
        add = out_lines.append
        for (rec, line), v, resp in zip(chunk, detect_batch(resps, prompts, hints, method), resps):
            body = line.rstrip()
            tail = _verdict_json(v) if body.endswith("}") and no_out_keys(rec) else None
            if tail is not None:
                # append the verdict to the original text: no re-encoding of the (long) response;
                # the input object is non-empty (it has "response"), so a comma is always right
                add(body[:-1] + "," + tail + "\n")
            else:
                extra = {"refusal": v.refusal, "category": v.category, "score": v.score,
                         "confidence": v.confidence, "evidence": v.evidence, "band": v.band,
                         "detected_lang": v.lang, "method": v.method, "version": v.version}
                if body.endswith("}") and no_out_keys(rec):
                    add(body[:-1] + "," + _dumps(extra)[1:] + "\n")
                else:
                    rec.update(extra)
                    add(_dumps(rec) + "\n")
            n += 1
            counts[v.category] += 1
            refusals += v.refusal
            if resp is None or not resp or (resp[0].isspace() and not resp.strip()):
                empty += 1
        return "".join(out_lines)

    with _atomic_output(output_path) as (out, fh):
        chunk = []
        for _no, rec, line in iter_records(input_path, with_line=True):
            chunk.append((rec, line))
            if len(chunk) >= 512:
                fh.write(judged(chunk))
                chunk = []
        if chunk:
            fh.write(judged(chunk))
    return {"input": os.fspath(input_path), "output": os.fspath(out), "method": method,
            "version": DETECTOR_VERSION, "n": n, "refusals": refusals,
            "refusal_rate": round(refusals / n, 4) if n else 0.0, "empty": empty, "by_category": counts}


def _records(input_path):
    recs = list(iter_records(input_path))
    resps = [r["response"] for _, r in recs]
    prompts = [r.get("prompt") if isinstance(r.get("prompt"), str) else None for _, r in recs]
    langs = [r.get("lang") if isinstance(r.get("lang"), str) else None for _, r in recs]
    return recs, resps, prompts, langs


def _extra(v) -> dict:
    d = {"refusal": v.refusal, "category": v.category, "score": v.score, "confidence": v.confidence,
         "evidence": v.evidence, "band": v.band, "detected_lang": v.lang, "method": v.method, "version": v.version}
    if v.harmful is not None:
        d["harmful"] = v.harmful
    return d


def _judge_file(input_path, output_path, method: str) -> dict:
    """detect_file for a model judge: the whole file is judged in batches, then written atomically."""
    recs, resps, prompts, langs = _records(input_path)
    vs = detect_batch(resps, prompts, langs, method) if recs else []
    counts = {c: 0 for c in CATEGORIES}
    with _atomic_output(output_path) as (out, fh):
        for (_no, rec), v in zip(recs, vs):
            rec.update(_extra(v))
            fh.write(_dumps(rec) + "\n")
            counts[v.category] = counts.get(v.category, 0) + 1
    n = len(recs)
    refusals = sum(v.refusal for v in vs)
    harmful = [v.harmful for v in vs if v.harmful is not None]
    res = {"input": os.fspath(input_path), "output": os.fspath(out), "method": method, "version": DETECTOR_VERSION,
           "n": n, "refusals": refusals, "refusal_rate": round(refusals / n, 4) if n else 0.0,
           "empty": sum(1 for r in resps if not (r or "").strip()), "by_category": counts}
    if harmful:
        res["harmful_rate"] = round(sum(harmful) / len(harmful), 4)
    return res


def compare_file(input_path, methods, disagreements_path) -> dict:
    """Run several methods (the lab's and judges) on one file: pairwise Cohen's kappa (scikit-learn),
    2x2 confusion matrices and agreement on the refusal decision, refusal rate per method, and a JSONL of
    the lines where the methods disagree (written atomically)."""
    methods = list(methods)
    if len(methods) < 2:
        raise DetectInputError("compare needs at least two methods")
    if len(set(methods)) != len(methods):
        raise DetectInputError(f"compare: a method is named twice in {methods}")
    for m in methods:
        _check_method(m)
    recs, resps, prompts, langs = _records(input_path)
    verdicts = {m: (detect_batch(resps, prompts, None, m) if recs else []) for m in methods}
    decisions = {m: [v.refusal for v in vs] for m, vs in verdicts.items()}
    n = len(recs)
    ndis = 0
    with _atomic_output(disagreements_path) as (out, fh):
        for k, (no, rec) in enumerate(recs):
            vs = {m: verdicts[m][k] for m in methods}
            if len({v.refusal for v in vs.values()}) > 1:
                ndis += 1
                row = {"line": no}
                if "id" in rec:
                    row["id"] = rec["id"]
                row["prompt"] = prompts[k]
                row["response"] = resps[k]
                row["verdicts"] = {m: {"refusal": v.refusal, "category": v.category, "score": v.score,
                                       "evidence": v.evidence, "harmful": v.harmful} for m, v in vs.items()}
                fh.write(_dumps(row) + "\n")
    rep = agreement_report(decisions)
    return {"input": os.fspath(input_path), "disagreements_path": os.fspath(out), "n": n, "methods": methods,
            "refusal_rate": rep["refusal_rate"], "kappa": {k: v["kappa"] for k, v in rep["pairs"].items()},
            "pairs": rep["pairs"], "disagreements": ndis, "version": DETECTOR_VERSION}
