"""llmtailor: tailor an open-weight LLM into a company's own assistant, reproducibly from one YAML file."""

__version__ = "0.1.0"
__all__ = ["__version__"]
