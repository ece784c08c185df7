"""Server and model settings: the command line's flags and llama-cpp-python's `--config_file` JSON.

The config file has llama-cpp-python's shape: server keys (host, port, api_key, ...) and `models`, a list of
model entries (model, model_alias, chat_format, n_gpu_layers, n_ctx, ...). llama-cpp-python keys that kamado
has no use for are accepted and named in a warning; a key neither knows is an error naming it, so a typo
never passes silently.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# llama-cpp-python ModelSettings keys that change nothing in kamado (GPU placement is automatic, no mmap/mlock
# switches, no LoRA/draft/multimodal yet).
IGNORED_MODEL_KEYS = frozenset({
    "split_mode", "main_gpu", "tensor_split", "vocab_only", "use_mmap", "use_mlock", "kv_overrides", "rpc_servers",
    "n_ubatch", "n_threads_batch", "rope_scaling_type", "rope_freq_base", "rope_freq_scale", "yarn_ext_factor",
    "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx", "mul_mat_q", "logits_all", "offload_kqv",
    "flash_attn", "lora_base", "lora_path", "lora_scale", "numa", "clip_model_path", "cache", "cache_type", "cache_size",
    "hf_tokenizer_config_path", "hf_pretrained_model_name_or_path", "hf_model_repo_id", "draft_model",
    "draft_model_num_pred_tokens", "type_k", "type_v", "pooling_type", "seed",
})
IGNORED_SERVER_KEYS = frozenset({"interrupt_requests", "disable_ping_events", "root_path"})


class SettingsError(ValueError):
    """A bad flag or config file; the message names the file and key."""


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="path of the GGUF file")
    model_alias: str | None = Field(None, description="the name requests use (default: the file name without .gguf)")
    chat_format: str | None = None
    n_gpu_layers: int = 0
    n_ctx: int = Field(2048, ge=0)
    n_batch: int = Field(512, ge=1)
    n_threads: int | None = None
    n_parallel: int = Field(4, ge=1, description="requests decoded together (llama-server's -np)")
    embedding: bool = True
    last_n_tokens_size: int = 64
    verbose: bool = False

    @property
    def name(self) -> str:
        return self.model_alias or Path(self.model).name.removesuffix(".gguf")


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_key: str | None = None
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    models: list[ModelSettings] = Field(default_factory=list)
    # kamado's own keys.
    n_predict: int = Field(-1, ge=-1, description="default max tokens of a request that sets none (-1: until the context is full)")
    queue_size: int = Field(64, ge=0, description="requests that may wait for a free slot, per model; beyond it: 503")
    memory_budget_mb: int | None = Field(None, ge=1, description="models stay loaded while their sum fits (default: 3/4 of RAM)")
    # llama-server accepts any model name when it serves one model; with an alias or a config, names are checked.
    strict_model_names: bool = True

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]


def _strip_ignored(entry: dict, ignored: frozenset, where: str, warnings: list[str]) -> dict:
    dropped = sorted(k for k in entry if k in ignored)
    if dropped:
        warnings.append(f"{where}: ignoring llama-cpp-python setting(s) kamado has no use for: {', '.join(dropped)}")
    return {k: v for k, v in entry.items() if k not in ignored}


def _describe(e: ValidationError, source: str) -> str:
    first = e.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown setting '{loc}'"
    return f"{source}: setting '{loc}': {first['msg']}"


def load_config_file(path: str | Path, warnings: list[str]) -> ServerSettings:
    """Read llama-cpp-python's config_file JSON. Relative model paths are taken relative to the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SettingsError(f"cannot read config file {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SettingsError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"config file {path}: expected a JSON object at the top level")
    raw = _strip_ignored(raw, IGNORED_SERVER_KEYS, str(path), warnings)
    models = raw.get("models", [])
    if not isinstance(models, list):
        raise SettingsError(f"config file {path}: 'models' must be a list")
    entries = []
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            raise SettingsError(f"config file {path}: models[{i}] must be an object")
        m = _strip_ignored(m, IGNORED_MODEL_KEYS, f"{path} models[{i}]", warnings)
        if isinstance(m.get("model"), str) and not Path(m["model"]).is_absolute():
            m["model"] = str((path.parent / m["model"]).resolve())
        entries.append(m)
    raw["models"] = entries
    try:
        return ServerSettings.model_validate(raw)
    except ValidationError as e:
        raise SettingsError(_describe(e, f"config file {path}")) from None


def check_models(settings: ServerSettings) -> None:
    """Fail at startup, not at the first request, on a missing file or two models sharing a name."""
    if not settings.models:
        raise SettingsError("no model to serve: give -m FILE or a --config file with 'models'")
    seen: set[str] = set()
    for m in settings.models:
        if not Path(m.model).is_file():
            raise SettingsError(f"model file not found: {m.model}")
        if m.name in seen:
            raise SettingsError(f"two models are named {m.name!r}; give each a distinct model_alias")
        seen.add(m.name)
