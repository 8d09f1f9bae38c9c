"""TEMPORARY shim while lab.sweep moves to lab.experiments (removed before landing)."""
from lab.experiments import default_out, load_recipe, run  # noqa: F401
