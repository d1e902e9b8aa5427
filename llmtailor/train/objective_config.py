"""Settings of the training objectives beyond SFT: preference tuning (DPO, ORPO) and continued pretraining.

`train.objective` picks the objective; these sections hold only what that objective adds (the adapter, schedule and
batch settings stay in `train`, shared by every objective).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DpoLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class PreferenceConfig(BaseModel):
    """Preference tuning (DPO / ORPO) and how `tailor data preferences` builds pairs."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(None, description="Preference JSONL ({prompt, chosen, rejected} per line) that "
                              "train.objective dpo/orpo trains on; default: the file `tailor data preferences` wrote.")
    beta: float = Field(0.1, gt=0, description="DPO: strength of the pull toward the reference model; ORPO: weight "
                        "of the odds-ratio term.")
    loss_type: DpoLoss = Field("sigmoid", description="DPO loss of TRL's DPOTrainer: sigmoid (DPO), ipo, hinge, "
                               "robust, apo_zero, ... (TRL 1.16's list).")
    samples: int = Field(4, ge=2, le=32, description="`tailor data preferences`: answers sampled per prompt.")
    temperature: float = Field(0.9, gt=0, description="Sampling temperature when building pairs.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling when building pairs.")
    max_new_tokens: int = Field(128, ge=1, description="Token budget of each sampled answer.")
    max_prompts: int | None = Field(None, ge=1, description="Build pairs from at most this many training prompts.")
    gold_as_chosen: bool = Field(
        True, description="When no sampled answer scores as well as the reference answer, pair the reference "
        "(chosen) with the worst sample (rejected): the model's own failures become training signal.")
    seed: int = Field(0, description="Seed of the sampling.")
    out: Path = Field(Path("data/preferences.jsonl"), description="Where `tailor data preferences` writes pairs.")


class PretrainConfig(BaseModel):
    """Continued pretraining on raw domain text: packed fixed-length blocks, loss on every token."""

    model_config = ConfigDict(extra="forbid")

    sources: list[Path] = Field(default_factory=list, description="Text files or folders (txt, md, html, pdf, docx: "
                                "the formats `tailor rag ingest` reads).")
    block_size: int = Field(256, ge=16, description="Tokens per training block; documents are joined with the "
                            "end-of-text token and cut into blocks of this size.")
    min_chars: int = Field(1, ge=1, description="A file with fewer characters of text than this is an error.")


ObjectiveName = Literal["sft", "dpo", "orpo", "pretrain"]
