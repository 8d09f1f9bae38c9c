"""Readers for public data files that keep a line number per row, and a Hugging Face hub reader that
honours offline mode and fails in seconds (never the datasets library's minute-long retries).

Every row comes back as (where, dict): `where` is "file:line" for local files, "hub:<id>[<split>] row N"
for hub rows, so a bad row's LabError names exactly where it is.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lab.errors import LabError

Row = tuple[str, dict]


def _text(path: Path) -> str:
    if not path.is_file():
        raise LabError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # MultiJail / XSafety files start with a BOM
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise LabError(f"{path}:{line}: invalid UTF-8 ({e.reason})") from None


def read_csv(path: Path, header: bool = True) -> list[Row]:
    """CSV rows as dicts (header names, or column numbers "0", "1", ... without a header); line = first
    physical line of the row (quoted fields may span lines)."""
    text = _text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[Row] = []
    names = None
    start = 1
    try:
        for rec in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in rec):
                continue
            if header and names is None:
                names = [c.strip() for c in rec]
                continue
            if names is not None and len(rec) != len(names):
                raise LabError(f"{path}:{line}: {len(rec)} columns, the header has {len(names)} ({', '.join(names)})")
            keys = names or [str(i) for i in range(len(rec))]
            rows.append((f"{path}:{line}", dict(zip(keys, rec))))
    except csv.Error as e:
        raise LabError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None
    if header and names is None:
        raise LabError(f"{path}: empty CSV file (expected a header row)")
    return rows


def read_json_records(path: Path) -> list[Row]:
    """A JSON array of objects (PolyRefuse's files) or JSONL; each object with the line it starts on."""
    text = _text(path)
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LabError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise LabError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            out.append((f"{path}:{lineno}", obj))
        return out
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    out = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise LabError(f"{path}:{text.count(chr(10)) + 1}: invalid JSON (unterminated array)")
        if text[pos] == "]":
            return out
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise LabError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise LabError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
        out.append((f"{path}:{line}", obj))


def read_records(path: Path) -> list[Row]:
    """By extension: .csv (with header), .json (array), .jsonl."""
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    if path.suffix.lower() in (".json", ".jsonl"):
        return read_json_records(path)
    raise LabError(f"{path}: unsupported file type (expected .csv, .json or .jsonl)")


def text_field(where: str, row: dict, *keys: str, required: bool = True) -> str | None:
    """The first present key among `keys`, as a non-empty stripped string; LabError naming where."""
    for k in keys:
        if k in row and row[k] is not None:
            v = row[k]
            if not isinstance(v, str):
                raise LabError(f"{where}: field '{k}': expected text, got {type(v).__name__}")
            if not v.strip():
                if required:
                    raise LabError(f"{where}: field '{k}' is empty")
                return None
            return v.strip()
    if required:
        raise LabError(f"{where}: missing field {' / '.join(repr(k) for k in keys)} (fields: {', '.join(map(str, row)) or 'none'})")
    return None


def hub_rows(dataset_id: str, split: str | None = None, config: str | None = None) -> list[Row]:
    """Rows of a hub dataset through `datasets`: from the local cache first (no network), then, unless
    HF_HUB_OFFLINE=1, one short probe of the hub before downloading. LabError says which failed."""
    import datasets

    from lab.models import HUB_PROBE_TIMEOUT_S, hub_offline

    label = f"hub:{dataset_id}"

    def load():
        ds = datasets.load_dataset(dataset_id, config, split=split) if split else datasets.load_dataset(dataset_id, config)
        if isinstance(ds, datasets.DatasetDict):  # no split asked: test, else the only / first split
            name = "test" if "test" in ds else next(iter(ds))
            ds = ds[name]
        return ds

    prev = datasets.config.HF_HUB_OFFLINE
    ds = None
    try:
        datasets.config.HF_HUB_OFFLINE = True
        ds = load()
    except Exception:
        ds = None
    finally:
        datasets.config.HF_HUB_OFFLINE = prev
    if ds is None:
        cache = datasets.config.HF_DATASETS_CACHE
        if hub_offline():
            raise LabError(f"{label}: not in the local datasets cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
                           f"downloading it (load it once on a connected machine, or pass a local copy)")
        from huggingface_hub import dataset_info

        try:
            dataset_info(dataset_id, timeout=HUB_PROBE_TIMEOUT_S)
        except Exception as e:
            raise LabError(f"{label}: not in the local datasets cache ({cache}) and the hub could not be reached "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); pass a local copy") from None
        try:
            ds = load()
        except Exception as e:
            raise LabError(f"{label}: could not load ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    tag = f"{label}[{ds.split}]" if getattr(ds, "split", None) else label
    return [(f"{tag} row {i}", dict(r)) for i, r in enumerate(ds)]
