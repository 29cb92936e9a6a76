"""ModelSpec: everything raysight needs to know about one model, in one frozen object.

YAML files and CLI flags only build a ModelSpec; the serve app and the batch jobs read it.
The ``Field(description=...)`` texts are the documentation (the README's configuration
reference is generated from them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raysight.errors import ConfigError
from raysight.paths import absolute_if_exists
from raysight.sampling import GREEDY_BELOW, NewTokens, Temperature, TopP

Task = Literal["generate", "embed"]
# raysight.families.FAMILY_NAMES, repeated here so a spec is checked without transformers.
FamilyName = Literal["chat-vlm", "qwen2-vl", "blip", "clip", "siglip", "siglip2"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
Scheduler = Literal["static", "continuous"]

BUILTIN_PREFIX = "builtin:"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageInputPolicy(_Frozen):
    """Which image sources are accepted and how large an image may be."""

    max_image_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="Largest encoded image accepted, in bytes."
    )
    max_image_pixels: int = Field(
        40_000_000,
        gt=0,
        description="Largest width x height accepted. Checked from the header, before decoding "
        "(decompression bombs are refused without being decoded).",
    )
    max_images_per_request: int = Field(
        4, gt=0, description="Most images one request (one chat or one row) may carry."
    )
    resize_max_side: int | None = Field(
        None,
        gt=0,
        description="If set, images whose longer side is above this are downscaled to it "
        "(aspect ratio kept) before the processor sees them.",
    )
    allow_local_paths: bool = Field(
        False, description="Accept local file paths as image sources (only under local_path_root)."
    )
    local_path_root: str | None = Field(
        None,
        description="The folder local image paths must resolve inside. Required when "
        "allow_local_paths is on.",
    )
    allow_urls: bool = Field(False, description="Accept http(s) URLs as image sources.")
    url_allowlist: tuple[str, ...] = Field(
        (),
        description="Domains URLs may point to (a domain also allows its subdomains). Empty "
        "means any public domain. Private, loopback and link-local addresses are always refused.",
    )
    url_timeout_s: float = Field(10.0, gt=0, description="Timeout for fetching one image URL.")
    url_max_redirects: int = Field(3, ge=0, description="Most redirects followed for one URL.")

    @model_validator(mode="after")
    def _root_when_paths_allowed(self) -> "ImageInputPolicy":
        if self.allow_local_paths and not self.local_path_root:
            raise ValueError(
                "allow_local_paths is on but local_path_root is not set; set local_path_root "
                "to the folder images may be read from"
            )
        return self


class AutoBatchSettings(_Frozen):
    """How `max_batch_size: auto` picks a batch size (raysight/autobatch.py)."""

    max_size: int = Field(
        64, gt=0, description="Largest batch the sweep tries (sizes 1, 2, 4, ... up to this)."
    )
    budget_s: float = Field(
        5.0, gt=0, description="Seconds the sweep may take; it stops before a size that would "
        "not fit in what is left."
    )
    tolerance: float = Field(
        0.03, ge=0, lt=1, description="The pick is the smallest batch whose throughput is "
        "within this fraction of the best size's (a bigger batch past that point only adds "
        "latency)."
    )
    cache_file: str | None = Field(
        None, description="JSON file the picks are kept in, keyed by model (source and file "
        "fingerprint), device, dtype and task, so the next start skips the sweep. Default: "
        "$XDG_CACHE_HOME/raysight/batch_sizes.json (~/.cache/...)."
    )


BatchSize = Annotated[int, Field(gt=0)]


class GenerationDefaults(_Frozen):
    """Sampling settings used when a request does not give its own."""

    max_new_tokens: NewTokens = Field(64, description="Default number of new tokens.")
    max_new_tokens_limit: NewTokens = Field(
        1024, description="Largest max_new_tokens a request may ask for."
    )
    temperature: Temperature = Field(
        0.0,
        description=f"0 means greedy decoding, as does any temperature below {GREEDY_BELOW:g}; "
        "at most 2, as a request may ask.",
    )
    top_p: TopP = Field(1.0, description="Nucleus sampling mass, in (0, 1].")


# A generous bound on the characters one token covers: a prompt longer than max_text_tokens
# times this cannot fit, and is refused without tokenizing (which costs seconds at millions).
PROMPT_CHARS_PER_TOKEN = 32


class ModelSpec(_Frozen):
    """One model: where it comes from, what it does, how it runs, what input it accepts."""

    model: str = Field(
        description="A Hugging Face model id, a local folder, or 'builtin:NAME' for a model "
        "shipped with raysight (builtin:shapes-vlm, builtin:shapes-clip)."
    )
    name: str | None = Field(
        None,
        description="The name clients use for this model (the 'model' field of API requests). "
        "Defaults to the last part of `model`.",
    )
    task: Task | None = Field(
        None,
        description="'generate' (images + prompt -> text) or 'embed' (image/text -> vector, "
        "zero-shot classify). Inferred from the model's config when not set.",
    )
    family: FamilyName | None = Field(
        None,
        description="Run the model as this family instead of the one its config's model_type "
        "names, for an architecture raysight does not list (such a model is refused at load "
        "otherwise). Generative: 'chat-vlm' (a chat template and one pixel_values row per "
        "image, as LLaVA), 'qwen2-vl', 'blip'; dual encoders: 'clip' (softmax over labels), "
        "'siglip' (sigmoid per label, texts padded to max length), 'siglip2' (SigLIP with "
        "NaFlex image inputs).",
    )
    dtype: DType = Field(
        "auto", description="Weights dtype. 'auto' is float32 on CPU and bfloat16 on CUDA."
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit).")
    trust_remote_code: bool = Field(
        False, description="Allow code shipped with the model to run. Off unless you trust it."
    )
    max_batch_size: BatchSize | Literal["auto"] = Field(
        8,
        description="Most items one forward/generate takes. 'auto': a short sweep on the "
        "device at start-up picks it (see auto_batch), cached per model and device; the pick "
        "is logged and shown in /v1/models and a job's summary.",
    )
    auto_batch: AutoBatchSettings = Field(
        default_factory=AutoBatchSettings, description="The sweep of max_batch_size: auto."
    )
    batch_wait_timeout_s: float = Field(
        0.005,
        ge=0,
        description="Online: how long a batch waits for more requests once the model is free.",
    )
    scheduler: Scheduler = Field(
        "continuous",
        description="Generate task, online: 'continuous' lets requests join and leave the "
        "running batch at every decode step (raysight/scheduler.py), bounded by "
        "kv_cache_tokens; 'static' runs each batch's generate to the end of its longest "
        "answer (new requests wait for the whole batch). Continuous is the default: on a mix "
        "of short and long answers (README, Benchmarks) short answers' median latency fell "
        "to 0.50x and the p99 time to first token to 0.26x of the static batcher's, with "
        "1.03x its output tokens/s; a closed loop of 8 clients ties (0.995x).",
    )
    max_running_sequences: int | None = Field(
        None, gt=0,
        description="Continuous scheduler: most sequences decoding together in one step; "
        "unset: max_batch_size.",
    )
    kv_cache_tokens: int = Field(
        65_536, gt=0,
        description="Continuous scheduler: the KV-cache budget in token slots, counted as "
        "(running sequences) x (the longest prompt + max_new_tokens among them), since the "
        "batch cache is left padded. A request waits while it would overflow the budget; one "
        "that cannot fit even alone is refused with a 400.",
    )
    admit_every_steps: int = Field(
        4, gt=0,
        description="Continuous scheduler: while sequences are decoding, waiting requests are "
        "admitted (prefilled) at most once per this many decode steps, unless they would fill "
        "every free slot; requests arriving one by one are then prefilled together. While a "
        "running sequence is this many tokens or fewer from its max_tokens, admission waits "
        "for it to end (at most this many steps more), so a short answer about to end is not "
        "held up by another request's prefill. 1 admits at every step (lowest time to first "
        "token, most interruptions of the decoding).",
    )
    prefill_tokens_per_step: int = Field(
        1024, gt=0,
        description="Continuous scheduler: prompt tokens prefilled between two decode steps "
        "(at least one request per step), so long prompts arriving do not stall the "
        "sequences already decoding; with none decoding, the most prompt tokens in one "
        "prefill forward (a step then admits everyone who fits, in several forwards).",
    )
    max_text_tokens: int = Field(
        4096,
        gt=0,
        description="Longest prompt accepted, in tokens after the chat template. A prompt (an "
        f"embed or search text, a label, all of a request's labels) of more than "
        f"{PROMPT_CHARS_PER_TOKEN} characters per such token is refused before it is tokenized.",
    )
    max_labels_per_request: int = Field(
        256,
        gt=0,
        description="Most labels one zero-shot classification (a /classify request, a "
        "classify row) may carry; each label not in the label cache is one text forward.",
    )
    generation: GenerationDefaults = Field(
        default_factory=GenerationDefaults, description="Sampling defaults (generate task)."
    )
    images: ImageInputPolicy = Field(
        default_factory=ImageInputPolicy, description="Image sources and size limits."
    )
    preprocess_cache_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Bytes of processed images (the image processor's tensors) kept per "
        "process, keyed by the image's pixels and the processor's settings, least recently "
        "used evicted first. A repeated image skips resizing and normalising. 0 turns it off.",
    )
    vision_cache_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Bytes of vision-encoder outputs (generate: image features, for Qwen2-VL, "
        "Qwen2.5-VL and LLaVA; embed: image vectors) kept per model replica or actor, on the "
        "model's device, keyed by the image's pixels, least recently used evicted first. A "
        "repeated image (a chat resending it, a dataset with duplicates) skips the encoder. "
        "0 turns it off.",
    )
    response_cache: bool = Field(
        False,
        description="Answer a repeated deterministic request (greedy decoding, same model, same "
        "images, prompt and token limits) from a cache instead of generating again. Sampled "
        "requests (temperature > 0) are never cached.",
    )
    response_cache_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="Bytes of answers the response cache keeps (when response_cache is on), "
        "least recently used evicted first.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            return value
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")

    @field_validator("max_batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: object) -> object:
        return batch_size_or_auto(value, "max_batch_size")

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must name a Hugging Face id, a local folder or builtin:NAME")
        return absolute_if_exists(value)  # a relative folder means the same in every process

    @property
    def batch_limit(self) -> int:
        """The most items a batch may hold: max_batch_size, or the sweep's largest size
        while `auto` is not resolved yet (a replica sizes its queue before it loads)."""
        if self.max_batch_size == "auto":
            return self.auto_batch.max_size
        return self.max_batch_size

    @property
    def served_name(self) -> str:
        """The name clients use in requests."""
        if self.name:
            return self.name
        if self.model.startswith(BUILTIN_PREFIX):
            return self.model[len(BUILTIN_PREFIX) :]
        return self.model.rstrip("/").split("/")[-1]

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelSpec":
        """Build a spec from a YAML file holding one mapping of ModelSpec fields."""
        return cls.from_mapping(_read_yaml(path), source=str(path))

    @classmethod
    def from_mapping(cls, data: object, source: str = "config") -> "ModelSpec":
        """Build a spec from a plain mapping, turning validation errors into ConfigError."""
        return validate_config(cls, data, source)


def validate_config(model: type[BaseModel], data: object, source: str) -> BaseModel:
    """`model` built from a plain mapping; what is wrong becomes one ConfigError that names
    `source` (a file, "command line", ...) and each bad field by its dotted path."""
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {model.__name__} fields, "
                          f"got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise ConfigError(f"{source}: invalid {model.__name__}: " + "; ".join(problems)) from None


def _read_yaml(path: str | Path) -> object:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def batch_size_or_auto(value: object, field: str) -> int | str:
    """A batch size as a spec or job setting takes it: a whole number above 0 (also as text,
    from a CLI flag) or ``"auto"``; anything else is refused naming `field`."""
    if value == "auto":
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"{field} must be a whole number above 0 or 'auto', got {value!r}")
