"""The typed settings of the inference programs (chat, test, serve, export, safety-eval): what the command
line says, as frozen objects the programs and the runtime receive -- never the argparse namespace. The
generation settings are `generation.GenerationSettings`; the export's are `export.run.ExportConfig`."""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSettings:
    """Which weights, where, and how they are loaded."""
    model_path: str
    adapter_path: str | None  # None: --no_adapter
    merge: bool = False  # merge the adapter into the weights (--merge_lora, and every export)
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    max_context: int | None = None  # None: the model's own window
    hub: str = "modelscope"  # where missing files (the default test file, the guard model) come from


@dataclass(frozen=True)
class ConversationSettings:
    system_prompt: str | None = None  # --system_prompt; None: the one the adapter was trained with
    history_turns: int = 6
    seed: int = 42


@dataclass(frozen=True)
class SafetySettings:
    enabled: bool = True  # --safety on|off
    guard: str = "none"  # --safety_model: a Qwen3Guard folder or hub id, base, none
    resources: str | None = None  # --safety_resources FILE; None: the built-in list


@dataclass(frozen=True)
class BatchSettings:
    """The batch test (`test`)."""
    output_file: str = "psydt_results.json"
    test_file: str | None = None
    questions_file: str | None = None
    dataset_repo: str = "YIRONGCHEN/PsyDTCorpus"
    dataset_dir: str = "./data/PsyDTCorpus"
    max_test_items: int = 0
    batch_size: int = 8
    compare_base: bool = False


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP server (`serve`)."""
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # --api_key or PSYDT_API_KEY
    max_concurrency: int = 8
    backend: str = "hf"  # hf: generate here; openai: forward to an OpenAI-compatible engine
    backend_url: str | None = None
    backend_model: str = "psydt"
    backend_api_key: str | None = None
    served_model_name: str = "psydt"
    max_body_bytes: int = 1 << 20
    cors_origins: tuple = field(default_factory=tuple)
    help_in_content: bool = True
    max_queue: int = 32  # requests waiting for a place (--max_queue; the CLI's default is 4 x --max_concurrency)
    queue_timeout: float = 60.0  # seconds one may wait for a place before it is refused (--queue_timeout)

    @property
    def remote(self) -> bool:
        """Generation by a remote engine: no weights are loaded here."""
        return self.backend == "openai"
