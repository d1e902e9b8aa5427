"""Fixtures for ladder tests: a run folder with a dataset version, and tiny base/tuned models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtailor.io import write_jsonl

LABELS = ["billing", "login", "shipping"]


def label_rows(n: int, offset: int = 0) -> list[dict]:
    out = []
    for i in range(n):
        lab = LABELS[(i + offset) % 3]
        out.append({"id": f"r{i + offset}", "messages": [
            {"role": "system", "content": "Classify the ticket. Answer with the label only."},
            {"role": "user", "content": f"ticket {i + offset}: problem with {lab}"},
            {"role": "assistant", "content": lab},
        ]})
    return out


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    ds = tmp_path / "datasets" / "v1"
    write_jsonl(ds / "train.jsonl", label_rows(12))
    write_jsonl(ds / "eval.jsonl", label_rows(6, offset=100))
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "completed", "dataset_dir": str(ds), "dataset_hash": "v1"}))
    return run


@pytest.fixture()
def models_factory(tiny_tokenizer):
    """Build the Models wrapper around two different tiny random models (tuned != base)."""
    from tests.conftest import build_tiny_model

    def make(cfg, run_dir):
        from llmtailor.eval.evaluate import Models

        return Models(cfg, run_dir, tuned=build_tiny_model(tiny_tokenizer, seed=1),
                      base=build_tiny_model(tiny_tokenizer, seed=0), tok=tiny_tokenizer)

    return make
