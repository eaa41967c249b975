"""Request bodies as typed wire models: each API's request is a pydantic model (strict types,
OpenAI's ranges, unknown fields refused), so `/openapi.json` describes what the endpoints take,
and a body that does not fit is a 400 in the house's words: the field, the rule, the value
received and the fix (`WireModel.parse`).

A field says how an error about it reads with `wire_field(rule, fix)`; a nested model's fields
too.  Where pydantic's own check is not the rule (a value accepted only "off", a check across
fields), a validator raises `WireError`, whose message is used as it is.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from glimp_integrations.config import did_you_mean
from glimp_integrations.serve.protocol import OPENAI_NAMED_SETTINGS, ROUTING_FIELDS, RequestError, shown

MAX_MESSAGES = 4096
MAX_TOOLS = 128
"""OpenAI's own limit."""
MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 256 * 1024
"""A JSON schema or format object: the most levels and bytes taken (a grammar is compiled from it)."""

WIRE_ERROR = "glimp_wire"
"""The pydantic error type of `WireError`: its message is the whole error."""


def WireError(message: str) -> PydanticCustomError:  # noqa: N802 (raised like an exception class)
    """An error a validator raises with the whole message (field, rule, value, fix)."""
    return PydanticCustomError(WIRE_ERROR, message.replace("{", "{{").replace("}", "}}"))


def wire_field(rule: str, fix: str, default: Any = None, **constraints: Any) -> Any:
    """A request field: pydantic `constraints` (ge, le, pattern, ...), and the error its value gets
    when it does not fit: "`name` {rule}; got {value}. {fix}" (`rule` and `fix` also describe
    the field in /openapi.json)."""
    return Field(
        default,
        description=f"{rule[0].upper()}{rule[1:]}. {fix}",
        json_schema_extra={"x-rule": [rule, fix]},
        **constraints,
    )


class WireModel(BaseModel):
    """A request body (or a part of one): strict JSON types, null meaning unset."""

    model_config = ConfigDict(extra="forbid", strict=True)

    accepted_names: ClassVar[Sequence[str]] = ()
    """Extra names an unknown field's error lists beside the model's own (the routing settings)."""

    @classmethod
    def parse(cls, body: Any) -> typing.Self:
        """The model of a JSON body; RequestError 400 naming the first field that does not fit."""
        if not isinstance(body, dict):
            raise RequestError(400, "The request body must be a JSON object.")
        try:
            return cls.model_validate(body)
        except ValidationError as error:
            raise cls._request_error(body, error.errors()[0]) from None

    @classmethod
    def _request_error(cls, body: Mapping[str, Any], error: Mapping[str, Any]) -> RequestError:
        path, info = _field_path(cls, error["loc"])
        param = _param(path)
        value = _value_at(body, path)
        if error["type"] == WIRE_ERROR:
            return RequestError(400, error["msg"], param)
        if error["type"] == "extra_forbidden" and len(path) == 1:
            names = [*cls.model_fields, *cls.accepted_names]
            return RequestError(
                400,
                f"Unknown field `{param}`; got {shown(value)}. {did_you_mean(str(param), names)}"
                f"Accepted: {', '.join(names)}.",
                param,
            )
        if error["type"] == "missing":
            rule, fix = _rule(info) or ("is required", "Pass it.")
            return RequestError(400, f"`{param}` is required: it {rule.removeprefix('must ')}. {fix}", param)
        ruled = _rule(info)
        if ruled is None:
            return RequestError(400, f"`{param}`: {error['msg'].lower()}; got {shown(value)}.", param)
        rule, fix = ruled
        return RequestError(400, f"`{param}` {rule}; got {shown(value)}. {fix}", param)


def _rule(info: Any) -> tuple[str, str] | None:
    extra = getattr(info, "json_schema_extra", None)
    return tuple(extra["x-rule"]) if isinstance(extra, dict) and "x-rule" in extra else None


def _field_path(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[list[str | int], Any]:
    """The part of a pydantic error's `loc` that names fields and list positions (union members'
    tags left out), and the deepest field's info."""
    path: list[str | int] = []
    info: Any = None
    current: Any = model
    for part in loc:
        models = _models_in(current)
        if isinstance(part, int):
            if _is_sequence(current):
                path.append(part)
                current = _item_type(current)
                continue
            break
        owner = next((m for m in models if part in m.model_fields), None)
        if owner is None:
            if not path or models:  # an unknown field of a model: name it, and stop
                path.append(part)
            break
        info = owner.model_fields[part]
        path.append(part)
        current = info.annotation
    return path, info


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in _union_members(annotation) for m in _models_in(arg)]


def _union_members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return typing.get_args(annotation)
    if origin is typing.Annotated:
        return (typing.get_args(annotation)[0],)
    return ()


def _is_sequence(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list or any(_is_sequence(a) for a in _union_members(annotation))


def _item_type(annotation: Any) -> Any:
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0]
    return next(_item_type(a) for a in _union_members(annotation) if _is_sequence(a))


def _param(path: Sequence[str | int]) -> str:
    """A field path as the APIs' errors name it: `messages[1]['role']`."""
    head, *rest = path
    return str(head) + "".join(f"[{part}]" if isinstance(part, int) else f"['{part}']" for part in rest)


def _value_at(body: Any, path: Sequence[str | int]) -> Any:
    for part in path:
        try:
            body = body[part]
        except (KeyError, IndexError, TypeError):
            return None
    return body


def routing_settings_model() -> type[WireModel]:
    """A model of the run settings a request may carry as extra fields (`ROUTING_FIELDS`), each
    described as the settings' declaration describes it; the engine checks their values."""
    from pydantic import create_model

    from glimp_integrations.settings import SETTINGS

    described = {setting.name: setting.description for setting in SETTINGS}
    fields: dict[str, Any] = {
        name: (Any, Field(None, description=f"Glimp's run setting: {described[name]}")) for name in ROUTING_FIELDS
    }
    return create_model("RoutingSettings", __base__=WireModel, **fields)


BOOLEAN = ("must be true or false", "Pass a JSON boolean.")


class RunRequest(routing_settings_model()):  # type: ignore[misc]
    """The fields both APIs take: the served model's id, streaming, sampling, stop sequences,
    parallel tool calls, labels; and Glimp's run settings (`threshold`, `policy`, ...)."""

    accepted_names: ClassVar[Sequence[str]] = ROUTING_FIELDS
    model: str | None = wire_field("must be a string", "Pass the id /v1/models lists.")
    stream: bool | None = wire_field(*BOOLEAN)
    temperature: float | None = wire_field(
        "must be a number from 0 to 2", "Pass e.g. 0.6 (0: greedy).", ge=0, le=2, allow_inf_nan=False
    )
    top_p: float | None = wire_field("must be a number in (0, 1]", "Pass e.g. 0.95.", gt=0, le=1, allow_inf_nan=False)
    seed: int | None = wire_field("must be an integer (64-bit)", "Pass e.g. 0.", ge=-(2**63), le=2**63 - 1)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = wire_field(
        f"must be a string or a list of at most {MAX_STOP} strings", 'Pass e.g. ["\\n\\n"].'
    )

    @field_validator("stop")
    @classmethod
    def _short_stops(cls, value: Any) -> Any:
        for text in [value] if isinstance(value, str) else value or ():
            if len(text) > MAX_STOP_CHARS:
                raise WireError(
                    f"`stop` holds a string of {len(text)} characters; at most {MAX_STOP_CHARS} are taken. Shorten it."
                )
        return value

    parallel_tool_calls: bool | None = wire_field(*BOOLEAN)
    user: str | None = wire_field("must be a string", "Pass an end-user id.")
    # accepted and not used: labels, billing tier
    metadata: dict[str, str] | None = wire_field("must be an object of strings", 'Pass e.g. {"team": "search"}.')
    service_tier: str | None = wire_field("must be a string", "Pass e.g. auto.")

    def check_model(self, served_model: str) -> None:
        """A 404 unless the request names the served model (or none)."""
        if self.model not in (None, served_model):
            raise RequestError(
                404,
                f"`model` must be `{served_model}`, the model this server serves; got {shown(self.model)}.",
                "model",
                kind="not_found_error",
            )

    def run_settings(self) -> dict[str, Any]:
        """The `GlimpRouter.astream` arguments both APIs take: the run settings, sampling, stop
        sequences (a list) and `parallel_tool_calls`."""
        arguments = {
            name: getattr(self, name) for name in (*ROUTING_FIELDS, *OPENAI_NAMED_SETTINGS, "parallel_tool_calls")
        }
        arguments = {name: value for name, value in arguments.items() if value is not None}
        if isinstance(self.stop, str):
            arguments["stop"] = [self.stop]
        return arguments


def bounded_json(name: str, value: Any) -> Any:
    """`value` (a JSON schema or format object) unless it nests deeper than `MAX_JSON_DEPTH` or
    takes more than `MAX_JSON_BYTES`: then a WireError naming `name` and the limit."""
    import json

    depth, pending = 0, [(value, 1)]
    while pending:  # no recursion: the deepest object is what is being checked
        node, level = pending.pop()
        depth = max(depth, level)
        if depth > MAX_JSON_DEPTH:
            raise WireError(f"`{name}` nests deeper than {MAX_JSON_DEPTH} levels, the most taken. Flatten it.")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    size = len(json.dumps(value))
    if size > MAX_JSON_BYTES:
        raise WireError(f"`{name}` is {size} bytes of JSON; at most {MAX_JSON_BYTES} are taken. Send a smaller one.")
    return value
