"""python -m lab.detect INPUT.jsonl -o OUTPUT.jsonl [--method M] | --compare a,b[,c] [--disagreements D]
   python -m lab.detect --text "I'm sorry, but I can't help with that."

A small stand-alone entry point for the detector (the lab's CLI is `lab detect`)."""
from __future__ import annotations

import argparse
import json
import sys

from . import METHODS, DetectInputError, detect
from .io import compare_file, detect_file


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.detect", description="lab's shared refusal detector")
    ap.add_argument("input", nargs="?", help="JSONL with a 'response' field per line")
    ap.add_argument("-o", "--output")
    ap.add_argument("--method", default="tiered", choices=METHODS)
    ap.add_argument("--compare", help="comma-separated methods")
    ap.add_argument("--disagreements")
    ap.add_argument("--text", help="judge one response given on the command line")
    ap.add_argument("--prompt")
    a = ap.parse_args(argv)
    try:
        if a.text is not None:
            print(json.dumps(detect(a.text, a.prompt, method=a.method).to_dict(), ensure_ascii=False, indent=1))
            return 0
        if not a.input:
            ap.error("give INPUT.jsonl or --text")
        if a.compare:
            methods = [m.strip() for m in a.compare.split(",") if m.strip()]
            dis = a.disagreements or (a.input.rsplit(".", 1)[0] + ".disagreements.jsonl")
            res = compare_file(a.input, methods, dis)
        else:
            if not a.output:
                ap.error("give -o OUTPUT.jsonl")
            res = detect_file(a.input, a.output, method=a.method)
    except DetectInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
