"""What an Agent declares about behaviour implemented elsewhere, kept below both.

``EarnedAutonomy`` is read by the gate in tether.rollout.autonomy, which itself
takes Agents: declared here, the agent and the rollout import it without
importing each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EarnedAutonomy(BaseModel):
    """``after`` approvals in a row with no rejection or failure earn autonomy; then a
    ``sample`` share of calls still asks a human."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    after: int = Field(default=5, ge=1)
    sample: float = Field(default=0.1, ge=0.0, le=1.0)
