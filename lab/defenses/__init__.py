"""Defenses against harmful fine-tuning, by stage (issue 6 of 6). Each module cites its paper, documents
its hyperparameters and says where it follows the official code rather than the paper.

| stage | name | module | paper |
|---|---|---|---|
| alignment | vaccine | lab.defenses.alignment.vaccine | Huang et al., NeurIPS 2024 |
| alignment | booster | lab.defenses.alignment.booster | Huang et al., ICLR 2025 |
| alignment | recovery | lab.defenses.alignment.recovery | Qi et al., ICLR 2025 (data augmentation) |
| fine-tuning | mixing | lab.defenses.training.mixing | Bianchi et al., ICLR 2024 |
| fine-tuning | lisa | lab.defenses.training.lisa | Huang et al., NeurIPS 2024 |
| fine-tuning | tokenwise | lab.defenses.training.tokenwise | Qi et al., ICLR 2025 (constrained SFT) |
| fine-tuning | freeze-weights | lab.defenses.training.freeze | Wei et al. 2024 masks; Poppi et al. 2025 |
| fine-tuning | freeze-layers | lab.defenses.training.freeze | Li et al., ICLR 2025 (SPPFT) |
| post-fine-tuning | safelora | lab.defenses.posthoc.safelora | Hsu et al., NeurIPS 2024 |
| post-fine-tuning | antidote | lab.defenses.posthoc.antidote | Huang et al., ICML 2025 |
| post-fine-tuning | restore | lab.defenses.posthoc.restore | the lab's restore intervention |
| post-fine-tuning | layer-restore | lab.defenses.posthoc.restore | in the spirit of NLSR (Yi et al., AAAI 2025) |
| data | screening | lab.defenses.data.screening | provider-side moderation of fine-tuning data |

The benign task and the threat models live in lab.defenses.task; `kind: defense`
(lab.experiments.defense) runs them all under one protocol.
"""
from __future__ import annotations

STAGES = {
    "none": "none",
    "vaccine": "alignment", "booster": "alignment", "recovery": "alignment",
    "mixing": "fine-tuning", "lisa": "fine-tuning", "tokenwise": "fine-tuning",
    "freeze-weights": "fine-tuning", "freeze-layers": "fine-tuning",
    "safelora": "post-fine-tuning", "antidote": "post-fine-tuning", "restore": "post-fine-tuning",
    "layer-restore": "post-fine-tuning",
    "screening": "data",
}
POSTHOC = ("safelora", "antidote", "restore", "layer-restore")
ALIGNMENT = ("vaccine", "booster", "recovery")
