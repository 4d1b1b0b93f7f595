"""The alpha policy: the default of a request that gives none, and the range any request may ask.

Torch-free, so that settings and the server front end can validate without loading a model;
`engine.alpha` validates each request against these bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_ALPHA = -1.0
"""alpha -1 is the before model (on the shared vocabulary); below it the formula extrapolates past
the base model, which no LDA use needs."""
DEFAULT_ALPHA = 1.0
DEFAULT_MAX_ALPHA = 100.0


@dataclass(slots=True)
class AlphaConfig:
    """How alpha is chosen when a request gives none, and how far it may go."""

    default_alpha: float = DEFAULT_ALPHA
    """alpha for requests that give none."""
    max_alpha: float = DEFAULT_MAX_ALPHA
    """Upper bound on any request's alpha; the lower bound is always MIN_ALPHA (the before model)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_alpha) or self.max_alpha < 0:
            raise ValueError(f"max_alpha must be a finite number >= 0; got {self.max_alpha!r}")
        if not math.isfinite(self.default_alpha) or not MIN_ALPHA <= self.default_alpha <= self.max_alpha:
            raise ValueError(
                f"default_alpha must be a finite number in [{MIN_ALPHA:g}, max_alpha={self.max_alpha:g}]; "
                f"got {self.default_alpha!r}"
            )
