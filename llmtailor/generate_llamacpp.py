"""Greedy answers through llama.cpp, for evaluation with `eval.engine: llamacpp` (or auto where it applies).

The same prompts as `generate.generate_detailed` (rendered by `chat.render_prompt`, tokenized by the model's own
tokenizer, whose ids the GGUF shares), the same stop rule (the tokenizer's eos) and the same `Generation` result,
so every metric downstream is computed the same way whichever engine produced the text. One llama.cpp context
decodes the prompts one after another: on this CPU that beats transformers' batched generate (bench/serve.py).
A JSON-schema constraint becomes llama.cpp's grammar (see serve/llamacpp_engine.LlamaStructured).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtailor.chat import render_prompt
from llmtailor.generate import Generation


class LlamaCppGenerator:
    """One base GGUF context; adapters (GGUF LoRA files) switched per call."""

    def __init__(self, gguf: Path, tokenizer: Any, *, n_ctx: int = 4096):
        from llmtailor.serve.llamacpp_engine import default_threads, quiet_native, require_llama_cpp

        self.lc = require_llama_cpp()
        from llama_cpp import Llama

        self.tok = tokenizer
        threads = default_threads()
        with quiet_native():
            self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                             n_threads_batch=threads, verbose=False)
        self._adapters: dict[Path, Any] = {}
        self._current: Path | None = None
        self._structured: Any = None

    def close(self) -> None:
        for ptr in self._adapters.values():
            self.lc.llama_adapter_lora_free(ptr)
        self._adapters.clear()
        self.llm.close()

    def set_adapter(self, adapter_gguf: Path | None) -> None:
        import ctypes

        from llmtailor.errors import TailorError
        from llmtailor.serve.llamacpp_engine import quiet_native

        if adapter_gguf == self._current:
            return
        ctx = self.llm._ctx.ctx
        if adapter_gguf is None:
            rc = self.lc.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            ptr = self._adapters.get(adapter_gguf)
            if ptr is None:
                with quiet_native():
                    ptr = self.lc.llama_adapter_lora_init(self.llm._model.model, str(adapter_gguf).encode())
                if not ptr:
                    raise TailorError(f"llama.cpp could not load the LoRA GGUF {adapter_gguf}")
                self._adapters[adapter_gguf] = ptr
            rc = self.lc.llama_set_adapters_lora(ctx, (self.lc.llama_adapter_lora_p_ctypes * 1)(ptr), 1,
                                                 (ctypes.c_float * 1)(1.0))
        if rc:
            raise TailorError(f"llama.cpp refused the adapter {adapter_gguf} (code {rc})")
        self._current = adapter_gguf
        self.llm.reset()

    def grammar(self, schema: dict) -> Any:
        """A fresh llama.cpp grammar for `schema` (compiled and checked once)."""
        from llama_cpp import LlamaGrammar

        from llmtailor.serve.llamacpp_engine import LlamaStructured, quiet_native
        from llmtailor.serve.structured import ResponseFormat

        if self._structured is None:
            self._structured = LlamaStructured(self.lc, self.llm._model)
        text = self._structured.gbnf(ResponseFormat("json_schema", schema, "eval"))
        with quiet_native():
            return LlamaGrammar.from_string(text, verbose=False)

    def generate_detailed(self, conversations: list[list[dict]], *, max_new_tokens: int, adapter: Path | None = None,
                          schema: dict | None = None, progress: Any = None) -> list[Generation]:
        self.set_adapter(adapter)
        eos = {self.tok.eos_token_id, int(self.llm.token_eos())}
        out: list[Generation] = []
        for conv in conversations:
            ids = self.tok(render_prompt(self.tok, conv), add_special_tokens=False)["input_ids"]
            grammar = self.grammar(schema) if schema is not None else None
            new: list[int] = []
            stopped = False
            for tok in self.llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                                         grammar=grammar):
                if int(tok) in eos:
                    stopped = True
                    break
                new.append(int(tok))
                if len(new) >= max_new_tokens:
                    break
            out.append(Generation(self.tok.decode(new, skip_special_tokens=True).strip(), not stopped and
                                  len(new) >= max_new_tokens))
            if progress is not None:
                progress()
        return out
