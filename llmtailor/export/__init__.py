"""Export tuned models for other runtimes: GGUF LoRA adapters and merged GGUF models for llama.cpp and Ollama.

The public API lives in `llmtailor.export.gguf`; `tailor export` (llmtailor.cli.export) drives it for a run.
"""
