"""Packing several rows into one sequence is only safe when attention keeps them apart.

transformers builds a block-diagonal mask from `position_ids` that restart at 0 (sdpa, eager, flex) or passes
sequence boundaries to varlen kernels (flash attention); a model with its own attention code may do neither and
let rows attend to each other. Rather than trusting a list of names, a probe runs the model once on two short
rows packed together and once on the second row alone, and compares.
"""

from __future__ import annotations

from typing import Any


def isolates_packed_rows(model: Any, atol: float = 1e-4) -> bool:
    """True when the second of two packed rows gets the same hidden states as when it runs alone."""
    import torch

    from llmtailor.train.loss import backbone_and_head, base_model_of

    parts = backbone_and_head(model)
    if parts is None:
        return False
    backbone = parts[0]
    inner = base_model_of(model)
    vocab = int(inner.config.get_text_config().vocab_size)
    gen = torch.Generator().manual_seed(0)
    first = torch.randint(3, vocab, (5,), generator=gen)
    second = torch.randint(3, vocab, (7,), generator=gen)
    device = next(inner.parameters()).device
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            alone = backbone(input_ids=second[None].to(device), use_cache=False).last_hidden_state[0]
            packed_ids = torch.cat([first, second])[None].to(device)
            positions = torch.cat([torch.arange(5), torch.arange(7)])[None].to(device)
            # The boundaries as TRL's padding-free collator passes them too (varlen kernels read these, the others
            # the restarting positions), so the probe takes the path training takes.
            cu = torch.tensor([0, 5, 12], dtype=torch.int32)
            packed = backbone(input_ids=packed_ids, position_ids=positions, use_cache=False, cu_seq_lens_q=cu,
                              cu_seq_lens_k=cu, max_length_q=7, max_length_k=7).last_hidden_state[0, 5:]
    finally:
        inner.train(was_training)
    return bool(torch.allclose(alone.float(), packed.float(), atol=atol, rtol=1e-3))
