"""ServeConfig: which models to serve and how, in one frozen object.

A YAML file (``serve_app/config.yaml``, the ``args`` of a Serve config), the ``raysight
serve`` flags and Python callers all build a ServeConfig; ``build_app`` reads only it. Each
model is a ModelSpec (what the model is) plus DeploymentOptions (how Ray runs it); in YAML
the deployment options sit under a ``deployment:`` key next to the ModelSpec fields.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raysight.errors import ConfigError
from raysight.paths import absolute
from raysight.spec import ModelSpec, validate_config
from serve_app.deployment import DEFAULT_STUCK_BATCH_S


MIN_ONGOING_REQUESTS = 32


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeploymentOptions(_Frozen):
    """How Ray Serve runs one model's replicas."""

    num_replicas: int = Field(
        1, ge=1, description="Replicas of this model. Ignored when autoscaling_config is set."
    )
    autoscaling_config: dict[str, Any] | None = Field(
        None,
        description="Ray Serve autoscaling settings (min_replicas, max_replicas, "
        "target_ongoing_requests, ...). Replaces num_replicas when set.",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each replica.")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs per replica; fractions (0.5) let replicas share a GPU."
    )
    memory_bytes: int | None = Field(None, gt=0, description="Memory Ray reserves per replica.")
    torch_threads: int | None = Field(
        None,
        gt=0,
        description="Threads torch uses in a replica. Default: all cores of the machine "
        "(Ray would otherwise pin a 1-CPU replica to one thread and leave cores idle).",
    )
    concurrent_batches: int | None = Field(
        None,
        gt=0,
        description="Batches a replica runs at once, each on an equal share of torch_threads, "
        "while more requests wait than one batch takes (a batch holding everything waiting "
        "still gets every thread). Default: 2 for an embedding model on a CPU with 2 or more "
        "threads (two single-threaded batches side by side served 1.14x one two-threaded "
        "batch after another on 2 cores), else 1.",
    )
    env_vars: dict[str, str] = Field(
        default_factory=lambda: {"OMP_WAIT_POLICY": "PASSIVE"},
        description="Environment variables of each replica process. The default lets idle "
        "OpenMP threads sleep instead of spin: torch uses every core (torch_threads), and "
        "spinning threads would starve the replica's event loop, preprocessing, and anything "
        "else on the machine (measured 10x slower at batch size 1 on 2 busy cores).",
    )
    max_ongoing_requests: int | None = Field(
        None,
        gt=0,
        description="Requests one replica holds at once (being prepared, waiting for a batch "
        "or in the running batch); must be >= max_batch_size or batches never fill. Default: "
        "2 x max_batch_size (2 x auto_batch.max_size with max_batch_size: auto; a full batch "
        "forms while another runs), and at least 32: a "
        "request waiting in the replica joins the next batch the moment the model is free, "
        "while one waiting in Serve's router for a full replica is retried with a backoff "
        "of up to 0.5 s.",
    )
    max_queued_requests: int = Field(
        64,
        gt=0,
        description="Requests the ingress queues for this model when every replica is full. "
        "Past it, clients get 503 with Retry-After at once (never an unbounded queue).",
    )
    retry_after_s: int = Field(1, ge=1, description="The Retry-After header sent with a 503.")
    stuck_batch_s: float = Field(
        DEFAULT_STUCK_BATCH_S,
        gt=0,
        description="A batch running longer than this on a replica's model thread makes the "
        "replica's health check fail, and Serve replaces the replica (checked every "
        "health_check_period_s; its requests get a 503 or a retry on another replica). Set it "
        "well above your slowest real batch: the largest batch of the longest generation on "
        "this hardware.",
    )
    health_check_period_s: float = Field(
        1.0,
        gt=0,
        description="How often Serve asks each replica check_health. It is also how Serve "
        "notices a replica that died: a lost replica's successor starts only after the next "
        "check, so this bounds the time before the restart begins (Serve's own default, 10 s, "
        "added 5 s on average to an only replica's recovery). A check is one small call.",
    )

    def ray_actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.env_vars:
            options["runtime_env"] = {"env_vars": dict(self.env_vars)}
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        return options


class ServedModel(_Frozen):
    """One model to serve: its ModelSpec and its deployment options."""

    spec: ModelSpec = Field(
        description="What the model is. In YAML its fields sit directly in the entry "
        "(`model: builtin:shapes-vlm`), not under a `spec:` key."
    )
    deployment: DeploymentOptions = Field(
        default_factory=DeploymentOptions, description="How Ray Serve runs its replicas."
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_form(cls, data: Any) -> Any:
        # YAML writes a model flat: ModelSpec fields with an optional `deployment:` next to them.
        if isinstance(data, dict) and "spec" not in data:
            data = dict(data)
            deployment = data.pop("deployment", None)
            return {"spec": data} if deployment is None else {"spec": data, "deployment": deployment}
        return data

    @model_validator(mode="after")
    def _room_for_a_batch(self) -> "ServedModel":
        if self.max_ongoing_requests < self.spec.batch_limit:
            raise ValueError(
                f"deployment.max_ongoing_requests ({self.max_ongoing_requests}) is below "
                f"max_batch_size ({self.spec.batch_limit}): a replica could never fill a "
                "batch; raise max_ongoing_requests to at least max_batch_size (2x is better)"
            )
        return self

    @property
    def name(self) -> str:
        return self.spec.served_name

    @property
    def max_ongoing_requests(self) -> int:
        return self.deployment.max_ongoing_requests or max(2 * self.spec.batch_limit,
                                                           MIN_ONGOING_REQUESTS)


class IndexConfig(_Frozen):
    """A vector index folder (built by ``batch_jobs.index``) that /search queries."""

    path: str = Field(description="The index folder (index.faiss, ids.json, meta.json).")
    name: str | None = Field(
        None, description="The name /search requests use. Defaults to the folder's name."
    )
    model: str | None = Field(
        None,
        description="Served name of the embed model whose vectors the index holds. Defaults "
        "to the only embed model, or the one named in the index's meta.json.",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return absolute(value)  # replicas open it from their own working folder

    @property
    def index_name(self) -> str:
        return self.name or Path(self.path).name


class IngressOptions(_Frozen):
    """The HTTP-facing deployment: it parses requests and routes them; it runs no model."""

    num_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    num_cpus: float = Field(
        0.0,
        ge=0,
        description="CPUs Ray reserves for each ingress replica. It runs no model, so by "
        "default it reserves none and fits on a node whose CPUs the models have taken.",
    )
    max_ongoing_requests: int = Field(
        512, gt=0, description="Requests one ingress replica handles at once."
    )
    max_queued_requests: int = Field(
        1024, gt=0, description="Requests the HTTP proxy queues for the ingress before 503s."
    )
    separate: bool = Field(
        False,
        description="Keep a separate ingress deployment even when one model is served. By "
        "default (false) an app of one model has none: the model's replicas answer HTTP "
        "themselves (one Ray hop per request instead of two) and these ingress options do not "
        "apply. An app of several models always has the ingress.",
    )
    direct: bool | Literal["auto"] = Field(
        "auto",
        description="Whether the model's replica answers HTTP itself, without Serve's HTTP "
        "proxy in between (Ray Serve's direct ingress, behind raysight's relay on `port`): "
        "about half the CPU per request outside the model on one machine. `auto` (the "
        "default): yes when `raysight serve` starts its private local Ray for an app of one "
        "model with one replica, else Serve's proxy (a joined cluster, several models or "
        "replicas, autoscaling, and apps deployed from Python with start_serving). `true` "
        "asks for it (refused where it cannot apply); `false` keeps Serve's proxy.",
    )


class ServeConfig(_Frozen):
    """Everything ``build_app`` needs: models, indexes, HTTP limits and access control."""

    models: list[ServedModel] = Field(min_length=1, description="The models to serve.")
    indexes: list[IndexConfig] = Field(
        default_factory=list, description="Vector indexes for /search."
    )
    host: str = Field(
        "127.0.0.1", description="Address the HTTP server binds to (0.0.0.0 for all)."
    )
    port: int = Field(8000, ge=0, le=65535, description="HTTP port.")
    api_key: str | None = Field(
        None,
        description="If set, every route but /healthz, /readyz, the web page's own files "
        "(/, /ui/...) and the API description (/openapi.json, /docs, /redoc) needs "
        "'Authorization: Bearer <api_key>'.",
    )
    api_key_env: str | None = Field(
        None,
        description="Name of an environment variable holding the API key, read when the "
        "ingress starts; keeps the key out of Serve config files. Used when api_key is unset.",
    )
    max_body_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above it)."
    )
    max_inputs_per_request: int = Field(
        64, gt=0, description="Most inputs one /v1/embeddings request may carry."
    )
    docs: bool = Field(
        True, description="Serve /openapi.json, /docs (Swagger UI) and /redoc, with their "
        "assets from an installed package (no CDN). They are open without the API key; Swagger "
        "UI's Authorize button takes the key for 'Try it out'. false turns all three off.",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600,
        description="On SIGTERM or Ctrl-C, `raysight serve` stops taking requests and waits "
        "up to this long for those in flight before it stops the app (each replica's "
        "graceful shutdown timeout).",
    )
    app_name: str = Field("raysight", description="The Serve application name.")
    route_prefix: str = Field(
        "/",
        pattern=r"^/[^{}]*$",
        description="The HTTP path the app is served under. Several apps share one Serve "
        "cluster (and its proxy) only under distinct prefixes, e.g. '/captions'.",
    )
    ingress: IngressOptions = Field(
        default_factory=IngressOptions,
        description="The HTTP-facing deployment that parses requests and routes them.",
    )

    @model_validator(mode="after")
    def _names_resolve(self) -> "ServeConfig":
        names = [served.name for served in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"two models are served as {', '.join(duplicates)}; give each a distinct `name`"
            )
        index_names = [index.index_name for index in self.indexes]
        if len(set(index_names)) != len(index_names):
            raise ValueError("two indexes share a name; give each a distinct `name`")
        for index in self.indexes:
            if index.model is not None and index.model not in names:
                raise ValueError(
                    f"index {index.index_name!r} names model {index.model!r}, which is not "
                    f"served; served models: {', '.join(names)}"
                )
        return self

    @model_validator(mode="after")
    def _ingress_options_apply(self) -> "ServeConfig":
        """An app of one model has no separate ingress unless `ingress.separate` asks for one
        (the default since one hop): an ingress option changed from its default would then be
        dropped without a word (and `num_cpus` still reserved by the placement check)."""
        if len(self.models) > 1 or self.ingress.separate:
            return self
        defaults = IngressOptions()
        changed = sorted(name for name in self.ingress.model_fields_set - {"separate", "direct"}
                         if getattr(self.ingress, name) != getattr(defaults, name))
        if changed:
            raise ValueError(
                f"ingress.{', ingress.'.join(changed)} only apply to a separate ingress, and an "
                "app of one model has none by default (its replicas answer HTTP themselves): "
                "set ingress.separate: true to keep one, or remove "
                f"ingress.{', ingress.'.join(changed)}"
            )
        return self

    def direct_ingress_fits(self) -> bool:
        """Whether this app can have direct ingress: one model, no separate ingress, one
        replica and no autoscaling (one port on the replica)."""
        return self._direct_ingress_misfit() is None

    def _direct_ingress_misfit(self) -> str | None:
        """Why this app cannot have direct ingress, or None when it can."""
        if len(self.models) > 1 or self.ingress.separate:
            return ("ingress.direct serves one model whose replica answers HTTP itself; this "
                    "app has an ingress deployment (several models, or ingress.separate): "
                    "serve one model, or drop ingress.direct")
        deployment = self.models[0].deployment
        if deployment.num_replicas != 1 or deployment.autoscaling_config:
            return ("ingress.direct binds the model's one replica to the port, so it needs "
                    "deployment.num_replicas 1 and no autoscaling_config; to scale out, drop "
                    "ingress.direct (Serve's proxy then spreads requests over the replicas)")
        return None

    def with_direct_ingress_resolved(self, private_ray: bool) -> "ServeConfig":
        """This config with `ingress.direct` true or false: `auto` is true when this app
        fits (`direct_ingress_fits`) and runs on a private Ray started for it."""
        if self.ingress.direct != "auto":
            return self
        direct = private_ray and self.direct_ingress_fits()
        return self.model_copy(update={
            "ingress": self.ingress.model_copy(update={"direct": direct})})

    @model_validator(mode="after")
    def _direct_ingress_fits(self) -> "ServeConfig":
        """Direct ingress pins the one replica to `port`: one model, one replica."""
        misfit = self._direct_ingress_misfit() if self.ingress.direct is True else None
        if misfit:
            raise ValueError(misfit)
        return self

    def resolved_api_key(self) -> str | None:
        """The API key to require, if any (api_key, else the api_key_env variable)."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(
                    f"api_key_env names {self.api_key_env}, which is not set in the ingress's "
                    "environment; set it (e.g. runtime_env.env_vars) or use api_key"
                )
            return key
        return None

    def model(self, name: str) -> ServedModel:
        for served in self.models:
            if served.name == name:
                return served
        raise KeyError(name)

    @classmethod
    def from_mapping(cls, data: object, source: str = "serve config") -> "ServeConfig":
        """Build a config from a plain mapping, turning validation errors into ConfigError."""
        return validate_config(cls, data, source)

    @classmethod
    def for_specs(cls, specs: list[ModelSpec], **fields: Any) -> "ServeConfig":
        """A config serving `specs` with default deployment options."""
        models = [ServedModel(spec=spec) for spec in specs]
        return validate_config(cls, {"models": models, **fields}, "serve settings")
