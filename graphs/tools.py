"""The tool registry: adding a tool is one typed async function here plus one policy entry."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, ValidationError

from .display import summary
from .errors import InvalidArguments
from .types import Assessment

DEFAULT_TIMEOUT_S = 30.0
# Arguments longer than this cannot be reviewed by a person in any reasonable way: such a call is refused
# before it reaches a card (the model is told), so a card can always show every value in full on request.
MAX_ARGS_CHARS = 20_000
# How long a tool's own check of one call (RegisteredTool.assess) may take; one that takes longer is refused.
ASSESS_TIMEOUT_S = 15.0

Assess = Callable[[dict[str, Any]], Awaitable[Assessment]]


@dataclass(frozen=True)
class CallContext:
    """What a tool may know about the call it is running as (set by the execute step around each call)."""

    reviewed: bool = False  # a person approved or edited this very call; False for calls policy let run alone


CURRENT_CALL: ContextVar[CallContext] = ContextVar("chatops_current_call", default=CallContext())


@dataclass(frozen=True)
class RegisteredTool:
    tool: BaseTool
    timeout_s: float
    # The tool's own check of a proposed call (e.g. where a URL really points), run before review; it can
    # only make a call stricter than its policy. None: policy alone decides.
    assess: Assess | None = None

    @property
    def name(self) -> str:
        return self.tool.name

    @property
    def description(self) -> str:
        return self.tool.description

    @property
    def args_model(self) -> type[BaseModel]:
        """What the tool's function takes (the model validates a call's arguments)."""
        return _pydantic_model(self.tool.args_schema, self.name)

    @property
    def call_model(self) -> type[BaseModel]:
        """The arguments a model may pass in a call (the args model less anything injected)."""
        return _pydantic_model(self.tool.tool_call_schema, self.name)

    def json_schema(self) -> dict[str, Any]:
        return self.call_model.model_json_schema()


def _pydantic_model(schema: object, tool: str) -> type[BaseModel]:
    # Every tool is made from a typed function (ToolRegistry.add), so LangChain gives it a pydantic v2 model.
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema
    raise TypeError(f"tool {tool} has no pydantic argument model: {schema!r}")


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, RegisteredTool] = {}

    def add(
        self,
        fn: Callable[..., Awaitable[str]],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        assess: Assess | None = None,
    ) -> RegisteredTool:
        """Register an async function; its type hints become the argument schema, its docstring the description."""
        tool = StructuredTool.from_function(coroutine=fn, name=name or fn.__name__, description=description)
        registered = RegisteredTool(tool, timeout_s, assess)
        self._tools[tool.name] = registered
        return registered

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[RegisteredTool]:
        return iter(self._tools.values())

    def get(self, name: str) -> RegisteredTool:
        return self._tools[name]

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def langchain_tools(self) -> list[BaseTool]:
        return [t.tool for t in self._tools.values()]

    def validate_args(self, name: str, args: Any) -> dict[str, Any]:
        """Check args against the tool's schema; return them as the tool will see them.

        Raises InvalidArguments with one readable message per bad field. Types are not coerced
        silently beyond what pydantic's lax mode does for JSON-ish input (e.g. "3" -> 3 is allowed).
        """
        if name not in self._tools:
            raise InvalidArguments(name, {"tool": f"unknown tool {name!r}"})
        if not isinstance(args, dict):
            raise InvalidArguments(name, {"args": f"expected an object of arguments, got {type(args).__name__}"})
        schema = self._tools[name].args_model
        try:
            model = schema.model_validate(args)
        except ValidationError as exc:
            errors: dict[str, str] = {}
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "args"
                errors.setdefault(field, err["msg"])
            raise InvalidArguments(name, errors) from None
        allowed = set(self._tools[name].call_model.model_fields)
        extra = set(args) - allowed
        if extra:
            raise InvalidArguments(name, dict.fromkeys(sorted(extra), "unexpected argument"))
        size = len(json.dumps(args, ensure_ascii=False, default=str))
        if size > MAX_ARGS_CHARS:
            raise InvalidArguments(
                name,
                {
                    "args": f"{size:,} characters of arguments are too many for a person to "
                    f"review (at most {MAX_ARGS_CHARS:,}); split the work"
                },
            )
        return {k: v for k, v in model.model_dump().items() if k in allowed}


def summarize_args(args: dict[str, Any], limit: int = 200) -> str:
    """A one-line, human-readable rendering of tool arguments: `channel=#ops, text="…"`, every value visible."""
    return summary(args, limit)
