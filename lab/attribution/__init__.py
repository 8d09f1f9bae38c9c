"""Safety attribution: which weights carry safety, per language, and what happens when we touch them.

    params.py         which weights are scored; parameter name -> (layer, module kind); passes
    calibration.py    chat-rendered calibration batches, token / example weights, language balancing
    snip.py           SNIP: `snip` (Wei et al.'s per-example |grad| estimator) and `snip-pooled`
    scores.py         Wanda, random, and `compute_scores` dispatching over all score methods
    masks.py          top-q % masks, "top-q % safety minus top-p % utility", per matrix / per row /
                      global; safetensors (bool) + JSON metadata
    actsvd.py         ActSVD (Wei et al.): low-rank safety / utility output subspaces, their removal,
                      orthogonal-to-utility removal, restoring the projected component
    sil.py            SIL (Poppi et al.): the weights a fine-tuning attack in each language relies on,
                      and their cross-language overlap
    analysis.py       per-language Jaccard overlap against equal-size random masks; layer x module heatmap
    interventions.py  prune (zero), restore from another model, gradient masks ("only" / "freeze"),
                      also for LoRA; `GradMaskHook` for lab.train.finetune(hooks=[...])
    memory.py         peak-memory estimate (`lab attribute --dry-run`)
    cli_entry.py      `attribute_main`, wired by lab/cli.py as `lab attribute`

The safety-localization experiment lives in lab/experiments/localization.py. See README.md
("Safety attribution").
"""
from lab.attribution.scores import (  # noqa: F401
    METHODS,
    build_calibration,
    build_balanced_calibration,
    scored_parameters,
    snip_scores,
    snip_pooled_scores,
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
