"""The `lab` command: run, eval, detect, attribute, probe, sweep, zoo, data, report."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from lab.errors import LabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A lab for cross-lingual fine-tuning attacks, refusal detection and safety localization.")
zoo_app = typer.Typer(no_args_is_help=True, help="Model organisms the lab builds itself.")
data_app = typer.Typer(no_args_is_help=True, help="The lab's datasets.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(data_app, name="data")


def _err(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)


def lab_errors(fn):
    """Bad input -> one clear message and exit code 2 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            rc = fn(*a, **kw)
        except LabError as e:
            _err(str(e))
            raise typer.Exit(2)
        except ValueError as e:  # e.g. the detector's input errors (subclass ValueError)
            if type(e).__name__.endswith("InputError"):
                _err(str(e))
                raise typer.Exit(2)
            raise
        if isinstance(rc, int) and rc:
            raise typer.Exit(rc)
    return wrapper


def _log(quiet: bool):
    return (lambda *a, **k: None) if quiet else print


@app.command()
@lab_errors
def run(recipe: Path = typer.Argument(..., help="recipe YAML"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<name>-<hash>)"),
        set_: List[str] = typer.Option([], "--set", help="override a recipe field: key=value (dotted path)"),
        no_wandb: bool = typer.Option(False, "--no-wandb", help="no W&B tracking for this run"),
        quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Run a recipe: evaluate, fine-tune, evaluate, report."""
    from lab.config import experiment_of, load_recipe, parse_override
    from lab.runner import run as run_recipe

    overrides = dict(parse_override(s) for s in set_)
    try:
        from lab.tracking import sweep_overrides_from_env
        overrides = {**sweep_overrides_from_env(), **overrides}
    except ImportError:
        pass
    experiment = experiment_of(recipe)
    if experiment == "safety-localization":
        from lab.attribution.recipe import run_safety_localization

        run_safety_localization(_load_yaml_with(recipe, overrides, no_wandb), out or Path("runs") / "safety-localization",
                                log=_log(quiet))
        return 0
    if experiment == "censorship-residue":
        from lab.probe import run_probe_recipe

        run_probe_recipe(recipe, out, overrides, tracking="none" if no_wandb else None, log=_log(quiet))
        return 0
    if experiment != "spine":
        raise LabError(f"{recipe}: unknown experiment '{experiment}' (spine, safety-localization, censorship-residue)")
    r = load_recipe(recipe, overrides)
    run_recipe(r, out, tracking="none" if no_wandb else None, log=_log(quiet))


def _load_yaml_with(path: Path, overrides: dict, no_wandb: bool) -> dict:
    import yaml

    from lab.config import _set_dotted

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise LabError(f"{path}: invalid YAML ({e})") from None
    for k, v in overrides.items():
        _set_dotted(raw, k, v)
    if no_wandb:
        raw["tracking"] = "none"
    return raw


@app.command("eval")
@lab_errors
def eval_(model: str = typer.Option("zoo:organism", "--model", "-m", help="hub id, local path or zoo:<name>"),
          langs: str = typer.Option("zh,ja,en,it,hi", "--langs"),
          limit: Optional[int] = typer.Option(None, "--limit", help="parallel prompts per kind"),
          detector: str = typer.Option("tiered", "--detector"),
          out: Optional[Path] = typer.Option(None, "--out", "-o"),
          trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
          no_wandb: bool = typer.Option(False, "--no-wandb"),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Evaluate one model on the held-out harmful and benign prompts (no fine-tuning)."""
    from lab.config import EvalConfig, Recipe
    from lab.runner import run as run_recipe
    from pydantic import ValidationError

    try:
        ev = EvalConfig(langs=[l.strip() for l in langs.split(",")], limit=limit, detector=detector)
    except ValidationError as e:
        raise LabError(f"--langs/--detector: {e.errors()[0]['msg']}") from None
    r = Recipe(name="eval", model=model, eval=ev, trust_remote_code=trust_remote_code)
    run_recipe(r, out, tracking="none" if no_wandb else None, log=_log(quiet))


@app.command()
@lab_errors
def detect(input: Optional[Path] = typer.Argument(None, help="JSONL with a 'response' field per line"),
           output: Optional[Path] = typer.Option(None, "--output", "-o"),
           method: str = typer.Option("tiered", "--method", help="tiered | dictionary-000 | gcg | substring"),
           compare: Optional[str] = typer.Option(None, "--compare", help="comma-separated methods: kappa + disagreements"),
           disagreements: Optional[Path] = typer.Option(None, "--disagreements")):
    """Judge responses with the shared refusal detector."""
    import json

    from lab.detect.io import compare_file, detect_file

    if input is None:
        raise LabError("lab detect: give an INPUT.jsonl")
    if compare:
        methods = [m.strip() for m in compare.split(",") if m.strip()]
        dis = disagreements or (output or input.with_suffix("")).with_name(input.stem + ".disagreements.jsonl")
        res = compare_file(input, methods, dis)
        print(json.dumps(res, indent=1, ensure_ascii=False))
        return 0
    if output is None:
        raise LabError("lab detect: give -o OUTPUT.jsonl")
    res = detect_file(input, output, method=method)
    print(json.dumps(res, indent=1, ensure_ascii=False))


@app.command()
@lab_errors
def report(run_dir: Path = typer.Argument(..., help="a finished run directory")):
    """Re-render report.md and transfer.png from a run's metrics.json."""
    from lab.report import report_from_dir

    if not (run_dir / "metrics.json").is_file():
        raise LabError(f"{run_dir}: no metrics.json (not a finished run)")
    print(report_from_dir(run_dir))


@app.command()
@lab_errors
def attribute(model: str = typer.Option("zoo:organism", "--model", "-m"),
              method: str = typer.Option("snip", "--method", help="snip | wanda | random"),
              data: str = typer.Option("safety", "--data", help="safety | utility"),
              langs: str = typer.Option("all", "--langs", help="comma-separated languages, or 'all' (together)"),
              out: Path = typer.Option(Path("runs/attribution"), "--out", "-o"),
              q: float = typer.Option(5.0, "--q", help="top-q %% by safety score"),
              p: Optional[float] = typer.Option(None, "--p", help="minus top-p %% by utility score (set difference)"),
              scope: str = typer.Option("per-matrix", "--scope", help="per-matrix | global"),
              n_examples: int = typer.Option(64, "--n-examples"),
              dry_run: bool = typer.Option(False, "--dry-run", help="print the estimated peak memory and stop"),
              save_scores: bool = typer.Option(False, "--save-scores"),
              score_dtype: str = typer.Option("float32", "--score-dtype", help="float32 | bfloat16"),
              layers_per_pass: Optional[int] = typer.Option(None, "--layers-per-pass", help="score N decoder layers per pass (large models)"),
              trust_remote_code: bool = typer.Option(False, "--trust-remote-code")):
    """Score weights by importance for safety vs utility (SNIP, Wanda, random) and save masks."""
    from lab.attribution.cli_entry import attribute_main

    return attribute_main(model, method, data, [l.strip() for l in langs.split(",")], out, q, p, scope, n_examples,
                          dry_run, save_scores, layers_per_pass=layers_per_pass, score_dtype=score_dtype,
                          trust_remote_code=trust_remote_code)


@app.command()
@lab_errors
def probe(model: List[str] = typer.Option([], "--model", "-m", help="model(s) to probe; repeatable"),
          quick: bool = typer.Option(False, "--quick", help="seed 001's 22 questions (default)"),
          full: bool = typer.Option(False, "--full", help="all questions"),
          samples: int = typer.Option(3, "--samples"),
          temperature: float = typer.Option(0.7, "--temperature"),
          system: Optional[str] = typer.Option(None, "--system", help='e.g. "用中文回答如下问题"'),
          lang: List[str] = typer.Option([], "--lang", help="zh | ja | en (repeatable; default zh)"),
          out: Optional[Path] = typer.Option(None, "--out", "-o"),
          no_wandb: bool = typer.Option(False, "--no-wandb")):
    """Censorship probe: refusal, deflection and official-line answers to politically sensitive questions."""
    from lab.probe import probe_main

    return probe_main(list(model), quick=quick or not full, full=full, samples=samples, temperature=temperature,
                      system=system, langs=list(lang) or None, out=out, tracking="none" if no_wandb else "auto")


@app.command()
@lab_errors
def sweep(file: Path = typer.Argument(..., help="sweep YAML (W&B sweep format)"),
          out: Optional[Path] = typer.Option(None, "--out", "-o"),
          workers: int = typer.Option(1, "--workers", "-w"),
          wandb_: bool = typer.Option(False, "--wandb", help="create a real W&B sweep and run agents"),
          seed: Optional[int] = typer.Option(None, "--seed", help="another draw for method: random"),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Run (or resume) a sweep: one run directory per cell, file locks, aggregate summary."""
    from lab.sweep import sweep_main

    return sweep_main(file, out, workers, wandb_, quiet, seed=seed)


@zoo_app.command("build")
@lab_errors
def zoo_build(name: str = typer.Argument("organism", help="organism | organism-censored"),
              seed: int = typer.Option(0, "--seed"),
              bridge_share: Optional[float] = typer.Option(None, "--bridge-share",
                  help="translation + code-switched examples per request example (cross-script transfer dial)"),
              out: Optional[Path] = typer.Option(None, "--out", help="checkpoint root (default: the lab's zoo)"),
              set_: List[str] = typer.Option([], "--set", help="override an OrganismConfig field: key=value"),
              quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Train the model organism (organism-base + organism) deterministically from the lab's datasets."""
    from lab.models import ZOO_DIR
    import yaml
    from pydantic import ValidationError

    from lab.zoo.organism import OrganismConfig, build

    if name not in ("organism", "organism-censored"):
        raise LabError(f"lab zoo build: unknown organism '{name}' (expected organism or organism-censored)")
    kw = {"seed": seed, "censorship": name == "organism-censored"}
    if bridge_share is not None:
        kw["bridge_share"] = bridge_share
    for item in set_:
        key, sep, value = item.partition("=")
        if not sep or key not in OrganismConfig.model_fields:
            raise LabError(f"lab zoo build --set {item!r}: expected key=value with key one of "
                           f"{', '.join(OrganismConfig.model_fields)}")
        kw[key] = yaml.safe_load(value)
    try:
        cfg = OrganismConfig(**kw)
    except ValidationError as e:
        raise LabError(f"lab zoo build --set: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}") from None
    build(name, cfg, out or ZOO_DIR, log=_log(quiet))


@zoo_app.command("list")
def zoo_list():
    """List the zoo's checkpoints."""
    import json

    from lab.models import ZOO_DIR

    for p in sorted(ZOO_DIR.glob("*/build.json")):
        b = json.loads(p.read_text())
        print(f"zoo:{p.parent.name}\t{b['n_params'] / 1e6:.2f} M params\tstage {b['stage']}\tdata {b['data_sha256'][:12]}")


@data_app.command("build")
@lab_errors
def data_build(seed: int = typer.Option(0, "--seed")):
    """Rebuild datasets/splits/*.jsonl from the hand-written sources (deterministic)."""
    from lab.data import write_splits

    for k, v in write_splits(seed=seed).items():
        print(f"{k}\t{v}")


def main() -> None:  # python -m lab
    app()


if __name__ == "__main__":
    main()
