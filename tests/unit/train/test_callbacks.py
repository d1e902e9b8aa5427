"""metrics.jsonl rows as the trainer writes them."""

import json


def test_metrics_rows_carry_wall_time(tmp_path):
    """The workbench derives a running run's tokens/s from these stamps."""
    import time
    from types import SimpleNamespace

    from llmtailor.train.callbacks import MetricsLogger

    log = MetricsLogger(tmp_path / "metrics.jsonl")
    before = time.time()
    log.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=3, epoch=0.5), None,
               logs={"loss": 1.0, "num_tokens": 100})
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["step"] == 3 and row["num_tokens"] == 100 and before - 1 <= row["time"] <= time.time() + 1
