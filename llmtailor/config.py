"""The project file: `tailor.yaml` parsed into one pydantic model per stage.

Errors point at the YAML line and suggest the closest valid key, because a typo in a config
should cost seconds, not a failed training run.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from llmtailor.data.config import DataConfig
from llmtailor.data.raft import RaftConfig
from llmtailor.data.synth import SynthConfig
from llmtailor.errors import ConfigError, TailorError
from llmtailor.eval.config import EvalConfig, ReportConfig
from llmtailor.merge.config import MergeConfig
from llmtailor.rag.config import RagConfig
from llmtailor.serve.config import RegistryConfig, ServeConfig, served_base_name
from llmtailor.train.config import TrainConfig
from llmtailor.train.distill_config import DistillConfig
from llmtailor.train.objective_config import PreferenceConfig, PretrainConfig

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


class ModelConfig(BaseModel):
    """Which base model to tailor and where it runs."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        description="A packaged model name (smollm2-135m-instruct) or a local Hugging Face model folder.",
    )
    cache_dir: Path | None = Field(
        None, description="Where converted models are cached; default $LLMTAILOR_HOME/models or ~/.cache/llmtailor."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight storage dtype. auto: follows precision (bfloat16 where precision resolves to "
        "bf16 for inference or on CUDA, float32 for CPU training with autocast)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Compute precision of evaluation and generation (and of training unless "
        "train.precision is set). auto: bf16 where the CPU has native BF16 instructions (AVX-512 BF16, AMX) or "
        "the GPU supports it, else fp32. bf16 where the hardware lacks it is an error, not a silent fallback."
    )


class TailorConfig(BaseModel):
    """The whole project, one section per stage."""

    model_config = ConfigDict(extra="forbid")

    project: str = Field("tailor", description="Project name, shown in reports.")
    runs_dir: Path = Field(Path("runs"), description="Each run gets its own new folder here.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    synth: SynthConfig | None = Field(None, description="Synthetic rows by Evol-Instruct (`tailor data synth`).")
    distill: DistillConfig | None = Field(None, description="Teacher -> student distillation (`tailor distill`).")
    raft: RaftConfig | None = Field(
        None, description="Retrieval-augmented fine-tuning rows from an index's chunks (`tailor data raft`)."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    rag: RagConfig | None = Field(None, description="Retrieval: index folder, chunking, embeddings, search, answers.")
    serve: ServeConfig = Field(default_factory=ServeConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    _path: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check_routes(self) -> TailorConfig:
        """Route targets are checked here: the base and project names live outside the serve section."""
        base = served_base_name(self.model.base_model, self.serve.base_name)
        self.serve.check_route_targets({base, self.project, f"{self.project}:staging"})
        return self

    @property
    def path(self) -> Path | None:
        """The YAML file this config came from."""
        return self._path

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths resolve against."""
        return self._path.parent if self._path else Path.cwd()

    def to_yaml(self) -> str:
        """The resolved config, defaults included, as YAML."""
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False, allow_unicode=True)


def _line_index(text: str) -> dict[tuple, int]:
    """Map each key path (tuple of keys / list indexes) to its 1-based YAML line."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names of the sub-model that `loc` points into (for did-you-mean)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _submodel(fields[part].annotation)
    return list(getattr(current, "model_fields", {}).keys())


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _format_error(err: dict, lines: dict[tuple, int], file: Path) -> ConfigError:
    loc = tuple(err["loc"])
    # pydantic adds union branch names (e.g. 'str', 'SourceConfig') into loc; keep only real keys for lines.
    line = None
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            line = lines[loc[:n]]
            break
    field = ".".join(str(p) for p in loc) or None
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        options = _fields_at(TailorConfig, loc[:-1])
        close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(options)}" if options else "")
        return ConfigError(file, line, field, f"unknown key '{key}'{hint}")
    got = err.get("input")
    got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return ConfigError(file, line, field, f"{err['msg']}{got_s}")


def _resolve_paths(obj: Any, base: Path) -> None:
    """Make every relative Path field absolute against the config file's folder."""
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            value = getattr(obj, name)
            if isinstance(value, Path) and not value.is_absolute():
                object.__setattr__(obj, name, (base / value).resolve())
            else:
                _resolve_paths(value, base)
    elif isinstance(obj, list):
        for item in obj:
            _resolve_paths(item, base)


def parse_config(text: str, file: Path) -> TailorConfig:
    """Validate YAML text; raise the first problem as a ConfigError with its line (all problems in `.all`)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError(file, line, None, f"invalid YAML: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(file, 1, None, "the config must be a mapping of sections (model, data, train, eval, report)")
    try:
        cfg = TailorConfig.model_validate(raw)
    except ValidationError as e:
        lines = _line_index(text)
        errors = [_format_error(err, lines, file) for err in e.errors()]
        first = errors[0]
        if len(errors) > 1:
            first.problem += f" (and {len(errors) - 1} more: " + "; ".join(str(x) for x in errors[1:4]) + ")"
            first.args = (first.location() + first.problem,)
        first.all = errors  # type: ignore[attr-defined]
        raise first from None
    cfg._path = file.resolve()
    _resolve_paths(cfg, file.resolve().parent)
    return cfg


def load_config(path: str | Path) -> TailorConfig:
    """Read and validate a tailor.yaml."""
    path = Path(path)
    if not path.exists():
        raise TailorError(f"{path}: config file not found (create one with `tailor init DIR`)")
    return parse_config(path.read_text(encoding="utf-8"), path)


def json_schema() -> dict:
    """JSON Schema of tailor.yaml, for editors."""
    schema = TailorConfig.model_json_schema()
    schema["title"] = "llmtailor project file (tailor.yaml)"
    return schema
