"""An Ollama Modelfile next to the exported GGUF, so `ollama create NAME -f Modelfile` works on the folder.

FROM is the base GGUF (adapter export, with ADAPTER the GGUF LoRA) or the merged file; TEMPLATE is Ollama's Go
template for the base's chat format (ChatML and Llama 3 are recognised from the GGUF's chat template; otherwise
Ollama's own detection applies); SYSTEM is the project's system prompt, which the model was trained with.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmtailor.errors import TailorError
from llmtailor.io import write_text

CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
          "<|im_start|>assistant\n")
LLAMA3 = ("<|begin_of_text|>{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
          "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")


def template_for(chat_template: str | None) -> tuple[str | None, list[str]]:
    """(Ollama TEMPLATE, stop strings) for a Jinja chat template, or (None, []) when the format is not recognised."""
    text = chat_template or ""
    if "<|im_start|>" in text:
        return CHATML, ["<|im_end|>"]
    if "<|start_header_id|>" in text:
        return LLAMA3, ["<|eot_id|>"]
    return None, []


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise TailorError(f"{what} contains '\"\"\"', which a Modelfile cannot quote")
    return f'"""{text}"""'


def _ref(target: Path, folder: Path) -> str:
    """A path as the Modelfile names it: relative when inside the export folder (portable), else absolute."""
    target, folder = Path(target).resolve(), Path(folder).resolve()
    try:
        return "./" + target.relative_to(folder).as_posix()
    except ValueError:
        return os.fspath(target)


def write_modelfile(folder: Path, *, model: Path, adapter: Path | None = None, chat_template: str | None = None,
                    system: str | None = None, temperature: float = 0.0, num_ctx: int | None = None) -> Path:
    """Write `folder/Modelfile` (atomically) and return its path."""
    template, stops = template_for(chat_template)
    lines = ["# Written by `tailor export --format ollama`; create the model with: ollama create NAME -f Modelfile",
             f"FROM {_ref(model, folder)}"]
    if adapter is not None:
        lines.append(f"ADAPTER {_ref(adapter, folder)}")
    if template is not None:
        lines.append(f"TEMPLATE {_quoted(template, 'the chat template')}")
    else:
        lines.append("# TEMPLATE not set: the chat format was not recognised; Ollama reads it from the GGUF")
    if system:
        lines.append(f"SYSTEM {_quoted(system, 'data.system_prompt')}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines.append(f"PARAMETER temperature {temperature:g}")
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {int(num_ctx)}")
    return write_text(Path(folder) / "Modelfile", "\n".join(lines) + "\n")
