"""Continued pretraining shows the user no library FutureWarnings (transformers' own renames are notices for
library authors): the filter must be in place before the Trainer arguments are built, which is where they warn."""

import warnings

from tests.unit.train.test_pretrain_text import corpus, make_cfg


def test_pretrain_emits_no_transformers_future_warning(tmp_path, tiny_model_dir):
    from llmtailor.io import write_jsonl
    from llmtailor.train.pretrain import train as pretrain
    from tests.unit.test_train import rows

    ds = tmp_path / "ds"
    write_jsonl(ds / "train.jsonl", rows(4))
    write_jsonl(ds / "eval.jsonl", rows(2))
    cfg = make_cfg(tmp_path, tiny_model_dir, [corpus(tmp_path)], max_steps=1)
    with warnings.catch_warnings(record=True) as seen:  # also undoes the filter pretrain installs
        warnings.simplefilter("always")
        pretrain(cfg, ds, "h", show_progress=False)
    future = [f"{w.filename}:{w.lineno}: {w.message}" for w in seen if issubclass(w.category, FutureWarning)
              and "transformers" in w.filename]
    assert future == []
