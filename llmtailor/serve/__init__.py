"""OpenAI-compatible serving: many adapters on one base, dynamic batching, keys, RAG aliases, guardrails."""
