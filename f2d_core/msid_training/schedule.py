"""The learning-rate schedule: linear warm-up, then linear decay to zero (insightface's arcface_torch).

arcface_torch (`lr_scheduler.py` PolynomialLRWarmup with power 1, `train_v2.py`) raises the rate
linearly over the warm-up steps and lowers it linearly to 0 at the last step; its ViT configurations
(`configs/wf42m_pfc03_40epoch_8gpu_vit_t.py`) warm up for a tenth of the epochs, with AdamW at lr 1e-3
and weight decay 0.1. The paper gives only "AdamW, lr 1e-3, 30 epochs", so MSID training uses these.
"""

from __future__ import annotations

WARMUP_FRACTION = 0.1  # arcface_torch: warmup_epoch = num_epoch // 10


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """The rate of the update at 0-based `step` of `total_steps`: peak * (step + 1) / warmup_steps while
    warming up, then peak * (1 - (step - warmup_steps) / (total_steps - warmup_steps)) down to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * max(0.0, 1 - (step - warmup_steps) / max(1, total_steps - warmup_steps))
