"""When FASA acts: a window of noise levels (sigma), not a step counter.

ComfyUI may split cond and uncond into separate UNet calls and multi-evaluation samplers (heun, dpm_2)
call the model at sigmas between the schedule's, so counting calls would drift; the sigma of the call
does not (specification Sec. 3.4).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SigmaWindow:
    """Sigmas in [low, high] are inside. From start/end fractions of sampling: high = sigma at start_percent,
    low = sigma at end_percent (ComfyUI's model_sampling.percent_to_sigma)."""

    high: float = float("inf")
    low: float = 0.0

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"sigma window is empty: low {self.low} > high {self.high}")

    def contains(self, sigma: float) -> bool:
        """True when FASA acts at this sigma."""
        return self.low <= sigma <= self.high
