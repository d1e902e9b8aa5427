"""Settings of `tailor merge`: how adapters of one base are combined (flags on the command line override them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MergeMethod = Literal["linear", "ties", "dare_ties", "dare_linear", "cat", "svd"]


class MergeConfig(BaseModel):
    """Adapter merging through PEFT's `add_weighted_adapter`."""

    model_config = ConfigDict(extra="forbid")

    method: MergeMethod = Field("ties", description="linear (weighted sum, equal ranks), ties / dare_ties / "
                                "dare_linear (sign-consensus / random-drop merges of the task vectors), cat "
                                "(concatenated ranks, exact sum), svd (weighted sum re-factorised to rank r).")
    weights: list[float] | None = Field(None, description="One weight per adapter; default 1/n each for linear, 1.0 "
                                        "each for the others.")
    density: float = Field(0.5, gt=0.0, le=1.0, description="ties / dare: share of each task vector's entries kept.")
    majority_sign_method: Literal["total", "frequency"] = Field("total", description="ties: how the sign is elected.")
