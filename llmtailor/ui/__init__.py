"""The workbench (`tailor ui`): a local web UI over a project's runs, registry, data, playground and retrieval."""

from llmtailor.ui.app import create_app

__all__ = ["create_app"]
