"""Which engine decodes for `tailor serve` (and evaluation): the rule for `auto`, and building the chosen one.

auto picks llama.cpp when all of these hold, and says which one failed otherwise:
llama-cpp-python is installed, the model runs on CPU (on CUDA the transformers engine or vLLM is faster), and the
base has a GGUF file (the packaged SmolLM2 does; a Hugging Face folder needs `tailor export --merge` first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmtailor.errors import TailorError

ENGINES = ("auto", "transformers", "llamacpp")


@dataclass
class EngineChoice:
    name: str  # "transformers" | "llamacpp"
    reason: str


def choose_engine(model_cfg: Any, requested: str = "auto") -> EngineChoice:
    """Resolve `auto`; an explicit `llamacpp` that cannot run is an error naming what is missing."""
    if requested not in ENGINES:
        raise TailorError(f"engine {requested!r}: choose one of {', '.join(ENGINES)}")
    if requested == "transformers":
        return EngineChoice("transformers", "asked for")
    from llmtailor.serve.llamacpp_engine import INSTALL_HINT, llama_cpp_available

    if not llama_cpp_available():
        if requested == "llamacpp":
            raise TailorError(f"--engine llamacpp needs llama-cpp-python: {INSTALL_HINT}")
        return EngineChoice("transformers", f"llama-cpp-python is not installed ({INSTALL_HINT} for the faster "
                                            "CPU engine)")
    from llmtailor.models import choose_device

    device = choose_device(model_cfg).device
    if device != "cpu" and requested == "auto":
        return EngineChoice("transformers", f"the model runs on {device}")
    from llmtailor.export.gguf import base_gguf

    try:
        base_gguf(model_cfg)
    except TailorError as e:
        if requested == "llamacpp":
            raise
        return EngineChoice("transformers", f"no GGUF for the base ({e})")
    return EngineChoice("llamacpp", "asked for" if requested == "llamacpp" else "llama-cpp-python installed, CPU, "
                        "base has a GGUF")


def build_engine(cfg: Any, choice: EngineChoice, stats: Any = None) -> Any:
    """The engine object for `create_app` (loads the model)."""
    s = cfg.serve
    if choice.name == "llamacpp":
        from llmtailor.export.gguf import base_gguf, cached_adapter_gguf
        from llmtailor.models import load_tokenizer
        from llmtailor.serve.llamacpp_engine import LlamaCppEngine

        gguf = base_gguf(cfg.model)
        return LlamaCppEngine(gguf, load_tokenizer(cfg.model), slots=s.llamacpp_slots, n_ctx=s.max_model_len or 2048,
                              n_threads=s.llamacpp_threads, flash_attn=s.llamacpp_flash_attn,
                              max_loaded_adapters=s.max_loaded_adapters, stats=stats,
                              adapter_gguf=lambda path: cached_adapter_gguf(path, gguf), max_queue=s.max_queue,
                              stream_interval_ms=s.stream_interval_ms)
    from llmtailor.models import load_model
    from llmtailor.serve.engine import Engine

    model, tok = load_model(cfg.model)
    return Engine(model, tok, max_batch_size=s.max_batch_size, batch_wait_ms=s.batch_wait_ms,
                  max_model_len=s.max_model_len, max_loaded_adapters=s.max_loaded_adapters, stats=stats,
                  prefix_cache_size=s.prefix_cache_size, prefix_min_tokens=s.prefix_min_tokens, max_queue=s.max_queue,
                  stream_interval_ms=s.stream_interval_ms, lean_decode=s.lean_decode)
