"""Safety attribution: which weights carry safety, per language, and what happens when we touch them.

    scores.py         SNIP, Wanda and random importance scores for every weight of every nn.Linear
    masks.py          top-q % masks, the set difference "top-q % safety minus top-p % utility",
                      per matrix or global; safetensors (bool) + JSON metadata
    analysis.py       per-language Jaccard overlap against equal-size random masks; layer x module heatmap
    interventions.py  prune (zero), restore from another model, gradient masks ("only" / "freeze"),
                      also for LoRA
    memory.py         peak-memory estimate (`lab attribute --dry-run`)
    recipe.py         the safety-localization experiment (recipes/safety-localization.yaml)
    cli_entry.py      `attribute_main`, wired by lab/cli.py as `lab attribute`

See README.md ("Safety attribution").
"""
from lab.attribution.scores import (  # noqa: F401
    build_calibration,
    scored_parameters,
    snip_scores,
    wanda_scores,
    random_scores,
    compute_scores,
)
from lab.attribution.masks import (  # noqa: F401
    top_q_mask,
    set_difference_mask,
    mask_counts,
    save_mask,
    load_mask,
    save_scores,
    load_scores,
)
