"""Sampling settings and their limits, in one place.

The HTTP API's request bodies, the ModelSpec's generation defaults and the generate engine
all take their ranges from here, so a value one accepts the others accept too:
temperature in [0, 2] (0 is greedy decoding, and so is anything below GREEDY_BELOW), top_p in
(0, 1], token counts positive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raysight.errors import InvalidRequest

if TYPE_CHECKING:
    from raysight.spec import GenerationDefaults

MAX_TEMPERATURE = 2.0  # OpenAI's bound; hotter than this is noise
# Colder than this decodes greedily: such sampling picks the top token anyway, and dividing
# the logits by a temperature near 1e-40 overflows them to inf (a NaN probability tensor).
GREEDY_BELOW = 1e-5

Temperature = Annotated[float, Field(ge=0.0, le=MAX_TEMPERATURE)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
NewTokens = Annotated[int, Field(ge=1)]


class Sampling(BaseModel):
    """One request's sampling once the spec's defaults fill what it left out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: NewTokens
    min_new_tokens: int = Field(0, ge=0)
    temperature: Temperature
    top_p: TopP

    @model_validator(mode="after")
    def _min_not_above_max(self) -> "Sampling":
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens must not be above max_new_tokens")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def resolve_sampling(
    defaults: "GenerationDefaults",
    *,
    max_new_tokens: int | None = None,
    min_new_tokens: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
) -> Sampling:
    """A request's sampling with `defaults` for the unset fields, checked; a value out of
    range (or max_new_tokens over the spec's limit) is an InvalidRequest naming it."""
    max_new = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
    try:
        sampling = Sampling(
            max_new_tokens=max_new,
            min_new_tokens=min_new_tokens,
            temperature=defaults.temperature if temperature is None else temperature,
            top_p=defaults.top_p if top_p is None else top_p,
        )
    except ValidationError as exc:
        raise InvalidRequest(problems(exc)) from None
    if sampling.max_new_tokens > defaults.max_new_tokens_limit:
        asked = str(sampling.max_new_tokens)
        # 1e308 is a whole number, so an integer: its 309 digits would bury the message.
        asked = f"{int(asked):,}" if len(asked) <= 15 else f"a {len(asked)}-digit number"
        raise InvalidRequest(
            f"max_tokens (max_new_tokens) {asked} is over this model's limit of "
            f"{defaults.max_new_tokens_limit} (generation.max_new_tokens_limit)"
        )
    return sampling


def problems(exc: ValidationError) -> str:
    """pydantic's report as one line: 'field: message; field: message'."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def choose_token(logits, temperature: float, top_p: float, generator=None) -> int:
    """The next token from one sequence's logits [vocab]: the top one when greedy
    (temperature 0 or below GREEDY_BELOW), else a draw from the temperature-scaled softmax
    cut to the smallest set of tokens whose mass reaches top_p (the top token always stays).
    `generator` (a torch.Generator) makes a seeded request's draws repeatable, whatever
    sequences it runs next to."""
    import torch

    if temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        cut = before >= top_p
        cut[..., 0] = False  # the top token stays, however small top_p (1e-300 is 0 in fp32)
        sorted_probs[cut] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
