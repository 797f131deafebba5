"""Reading the providers' usage objects: every field today's SDKs define is known.

Each SDK's usage class is filled field by field from its own type annotations (so a field
a newer SDK adds is filled too): none may be reported as an unknown billable unit, and a
made-up count is.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import anthropic.types as anthropic_types
import pytest
from google.genai import types as gemini_types
from openai.types.completion_usage import CompletionUsage
from openai.types.responses import ResponseUsage
from pydantic import BaseModel

from tokenledger.ledger.providers import UsageReadError, read_usage, shape_of


def filled(model: type[BaseModel], top: bool = True) -> Any:
    """An instance with every field set: top-level counts 1000, nested ones 7."""
    values = {name: _value(field.annotation, top) for name, field in model.model_fields.items()}
    return model(**values)


def _value(annotation: Any, top: bool) -> Any:
    origin = typing.get_origin(annotation)
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _value(args[0], top)
    if origin is typing.Literal:
        return typing.get_args(annotation)[0]
    if origin is list:
        return [_value(args[0], False)]
    if origin is dict:
        return {}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return filled(annotation, top=False)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return next(iter(annotation))
    if annotation is int:
        return 1000 if top else 7
    if annotation is str:
        return "x"
    if annotation is bool:
        return False
    if annotation is float:
        return 0.5
    raise AssertionError(f"cannot fill {annotation!r}")


def consistent(dumped: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's 5m/1h split must add up to its total of cache writes."""
    if isinstance(dumped.get("cache_creation"), dict):
        dumped["cache_creation"] = {
            "ephemeral_5m_input_tokens": 600,
            "ephemeral_1h_input_tokens": 400,
        }
    return dumped


SDK_USAGE = [
    ("anthropic", anthropic_types.Usage),
    ("openai", CompletionUsage),
    ("openai", ResponseUsage),
    ("google", gemini_types.GenerateContentResponseUsageMetadata),
]


@pytest.mark.parametrize(("provider", "model"), SDK_USAGE)
def test_every_field_of_the_sdks_usage_is_known(provider: str, model: type[BaseModel]) -> None:
    instance = filled(model)
    dumps = [consistent(instance.model_dump(mode="json"))]
    if provider == "google":
        dumps.append(instance.model_dump(mode="json", by_alias=True))
    for dumped in dumps:
        read = read_usage(provider, dumped)
        assert read.unknown_units == (), dumped
        assert read.tokens.output_tokens > 0


@pytest.mark.parametrize(("provider", "model"), SDK_USAGE)
def test_a_made_up_count_is_named(provider: str, model: type[BaseModel]) -> None:
    dumped = consistent(filled(model).model_dump(mode="json"))
    dumped["hologram_tokens"] = 5
    dumped["hologram_notes"] = 5  # not named like a count: ignored
    dumped["nested_thing"] = {"teleport_requests": 2, "teleport_requests_zero": 0}
    read = read_usage(provider, dumped)
    assert read.unknown_units == ("usage.hologram_tokens", "usage.nested_thing.teleport_requests")


def test_shapes() -> None:
    assert shape_of(None, {"prompt_tokens": 1, "completion_tokens": 2}) == "openai-chat"
    assert shape_of(None, {"input_tokens": 1, "output_tokens": 2}) == "anthropic"
    assert shape_of("openai", {"input_tokens": 1, "output_tokens": 2}) == "openai-responses"
    assert shape_of(None, {"input_tokens": 1, "total_tokens": 3}) == "openai-responses"
    assert shape_of(None, {"promptTokenCount": 1}) == "gemini"
    with pytest.raises(UsageReadError):
        shape_of(None, {"tokens": 1})


def test_contradictions_are_refused() -> None:
    with pytest.raises(UsageReadError, match="exceed the prompt"):
        read_usage(
            "openai",
            {
                "prompt_tokens": 10,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 11},
            },
        )
    split = {
        "input_tokens": 1,
        "output_tokens": 1,
        "cache_creation_input_tokens": 10,
        "cache_creation": {"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": 1},
    }
    with pytest.raises(UsageReadError, match="does not add up"):
        read_usage("anthropic", split)
    with pytest.raises(UsageReadError):
        read_usage("openai", {"prompt_tokens": -1, "completion_tokens": 1})
    with pytest.raises(UsageReadError):
        read_usage("openai", {"prompt_tokens": "12", "completion_tokens": 1})
    with pytest.raises(UsageReadError, match="whole number"):
        read_usage("openai", {"prompt_tokens": 12.5, "completion_tokens": 1})
