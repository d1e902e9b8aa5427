"""Printing for commands: rich for people, one JSON object on stdout for scripts (--json)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

# Human-oriented output goes to stderr so that `--json` leaves stdout clean for scripts.
console = Console(stderr=True)


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()
