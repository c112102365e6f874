"""Block Kit validation: Slack's limits for messages and views, as pure functions returning Slack's errors.

Each check yields a human-readable line in Slack's own format,
`[ERROR] must be less than 11 items [json-pointer:/blocks/2/element/options]`, which the Web API puts in
`response_metadata.messages` next to the error string (`invalid_blocks`, `msg_too_long`, `no_text`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_TEXT = 40_000
MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_SECTION_TEXT = 3_000
MAX_SECTION_FIELDS = 10
MAX_FIELD_TEXT = 2_000
MAX_MARKDOWN_TEXT = 12_000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTIONS_ELEMENTS = 25
MAX_ID = 255
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2_000
MAX_URL = 3_000
MAX_OPTION_TEXT = 75
MAX_OPTION_VALUE = 150
MAX_OPTION_DESCRIPTION = 75
MAX_VIEW_TEXT = 24  # title, submit, close
MAX_PRIVATE_METADATA = 3_000
MAX_INPUT_LABEL = 2_000
# Options allowed per element type: Slack caps each differently.
MAX_OPTIONS = {
    "checkboxes": 10,
    "radio_buttons": 10,
    "overflow": 5,
    "static_select": 100,
    "multi_static_select": 100,
}

BLOCK_TYPES = frozenset(
    {
        "section",
        "divider",
        "image",
        "actions",
        "context",
        "input",
        "header",
        "rich_text",
        "markdown",
        "video",
        "file",
        "call",
        "table",
        "context_actions",
    }
)
# Elements whose interaction reaches the app: they carry an action_id that must be unique.
INTERACTIVE = frozenset(
    {
        "button",
        "checkboxes",
        "radio_buttons",
        "overflow",
        "datepicker",
        "timepicker",
        "datetimepicker",
        "static_select",
        "multi_static_select",
        "external_select",
        "multi_external_select",
        "users_select",
        "multi_users_select",
        "conversations_select",
        "multi_conversations_select",
        "channels_select",
        "multi_channels_select",
        "plain_text_input",
        "number_input",
        "email_text_input",
        "url_text_input",
        "rich_text_input",
        "file_input",
        "workflow_button",
    }
)


@dataclass
class Problem:
    """A rejected payload: Slack's error string plus the `[ERROR] ...` lines for response_metadata.messages."""

    error: str
    messages: list[str] = field(default_factory=list)


def _msg(text: str, pointer: str) -> str:
    return f"[ERROR] {text} [json-pointer:{pointer}]"


def _too_long(value: Any, limit: int, pointer: str) -> Iterator[str]:
    if isinstance(value, str) and len(value) > limit:
        yield _msg(f"must be less than {limit + 1} characters", pointer)


def _too_many(items: Any, limit: int, pointer: str) -> Iterator[str]:
    if isinstance(items, list) and len(items) > limit:
        yield _msg(f"must be less than {limit + 1} items", pointer)


def _text_object(obj: Any, limit: int, pointer: str, plain_only: bool = False) -> Iterator[str]:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        yield _msg("must provide an object with a text string", pointer)
        return
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if obj.get("type") not in allowed:
        yield _msg(f"must be one of {' or '.join(allowed)}", f"{pointer}/type")
    yield from _too_long(obj["text"], limit, f"{pointer}/text")


class _Ids:
    """block_id / action_id uniqueness across one message or view."""

    def __init__(self) -> None:
        self.block_ids: set[str] = set()
        self.action_ids: set[str] = set()

    def check(self, seen: set[str], value: Any, pointer: str) -> Iterator[str]:
        if value is None:
            return
        if not isinstance(value, str):
            yield _msg("must be a string", pointer)
            return
        yield from _too_long(value, MAX_ID, pointer)
        if value in seen:
            yield _msg(f"duplicate id '{value}'", pointer)
        seen.add(value)


def _options(options: Any, pointer: str) -> Iterator[str]:
    if not isinstance(options, list):
        return
    for i, opt in enumerate(options):
        p = f"{pointer}/{i}"
        if not isinstance(opt, dict):
            yield _msg("must be an option object", p)
            continue
        yield from _text_object(opt.get("text"), MAX_OPTION_TEXT, f"{p}/text")
        yield from _too_long(opt.get("value"), MAX_OPTION_VALUE, f"{p}/value")
        if "description" in opt:
            yield from _text_object(opt["description"], MAX_OPTION_DESCRIPTION, f"{p}/description")


def _element(el: Any, pointer: str, ids: _Ids) -> Iterator[str]:
    if not isinstance(el, dict) or not isinstance(el.get("type"), str):
        yield _msg("must provide an element with a type", pointer)
        return
    kind = el["type"]
    if kind in INTERACTIVE:
        yield from ids.check(ids.action_ids, el.get("action_id"), f"{pointer}/action_id")
    if kind in ("button", "workflow_button"):
        yield from _text_object(el.get("text"), MAX_BUTTON_TEXT, f"{pointer}/text", plain_only=True)
        yield from _too_long(el.get("value"), MAX_BUTTON_VALUE, f"{pointer}/value")
        yield from _too_long(el.get("url"), MAX_URL, f"{pointer}/url")
    if kind in MAX_OPTIONS:
        options = el.get("options")
        groups = el.get("option_groups")
        if options is None and groups is None:
            yield _msg("must provide options", f"{pointer}/options")
        yield from _too_many(options, MAX_OPTIONS[kind], f"{pointer}/options")
        yield from _options(options, f"{pointer}/options")
        if isinstance(groups, list):
            for g, group in enumerate(groups):
                yield from _options(
                    group.get("options") if isinstance(group, dict) else None, f"{pointer}/option_groups/{g}/options"
                )
        values = {o.get("value") for o in options or [] if isinstance(o, dict)}
        initial = el.get("initial_options") or ([el["initial_option"]] if el.get("initial_option") else [])
        for i, opt in enumerate(initial):
            if options is not None and (not isinstance(opt, dict) or opt.get("value") not in values):
                yield _msg("must match one of the options", f"{pointer}/initial_options/{i}")


def _block(block: Any, pointer: str, ids: _Ids) -> Iterator[str]:
    if not isinstance(block, dict):
        yield _msg("must be a block object", pointer)
        return
    kind = block.get("type")
    if kind not in BLOCK_TYPES:
        yield _msg(f"unsupported type: {kind}", f"{pointer}/type")
        return
    yield from ids.check(ids.block_ids, block.get("block_id"), f"{pointer}/block_id")
    if kind == "section":
        if "text" not in block and "fields" not in block:
            yield _msg("must provide either text or fields", pointer)
        if "text" in block:
            yield from _text_object(block["text"], MAX_SECTION_TEXT, f"{pointer}/text")
        fields = block.get("fields")
        yield from _too_many(fields, MAX_SECTION_FIELDS, f"{pointer}/fields")
        for i, f in enumerate(fields or []):
            yield from _text_object(f, MAX_FIELD_TEXT, f"{pointer}/fields/{i}")
        if "accessory" in block:
            yield from _element(block["accessory"], f"{pointer}/accessory", ids)
    elif kind == "header":
        yield from _text_object(block.get("text"), MAX_HEADER_TEXT, f"{pointer}/text", plain_only=True)
    elif kind == "markdown":
        yield from _too_long(block.get("text"), MAX_MARKDOWN_TEXT, f"{pointer}/text")
    elif kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not elements:
            yield _msg("must provide elements", f"{pointer}/elements")
        yield from _too_many(elements, MAX_CONTEXT_ELEMENTS, f"{pointer}/elements")
    elif kind == "actions":
        elements = block.get("elements")
        if not isinstance(elements, list) or not elements:
            yield _msg("must provide elements", f"{pointer}/elements")
            return
        yield from _too_many(elements, MAX_ACTIONS_ELEMENTS, f"{pointer}/elements")
        for i, el in enumerate(elements):
            yield from _element(el, f"{pointer}/elements/{i}", ids)
    elif kind == "input":
        yield from _text_object(block.get("label"), MAX_INPUT_LABEL, f"{pointer}/label", plain_only=True)
        yield from _element(block.get("element"), f"{pointer}/element", ids)
    elif kind == "rich_text":
        yield from _rich_text(block.get("elements"), f"{pointer}/elements")


RICH_TEXT_CONTAINERS = frozenset({"rich_text_section", "rich_text_preformatted", "rich_text_quote", "rich_text_list"})
RICH_TEXT_INLINE = {  # element type -> the fields it must carry
    "text": ("text",),
    "link": ("url",),
    "user": ("user_id",),
    "channel": ("channel_id",),
    "emoji": ("name",),
    "usergroup": ("usergroup_id",),
    "broadcast": ("range",),
    "date": ("timestamp", "format"),
    "color": ("value",),
}


def _rich_text(containers: Any, pointer: str) -> Iterator[str]:
    """rich_text: a list of sections/lists/preformatted/quotes, each holding typed inline elements."""
    if not isinstance(containers, list) or not containers:
        yield _msg("must provide elements", pointer)
        return
    for i, container in enumerate(containers):
        p = f"{pointer}/{i}"
        kind = container.get("type") if isinstance(container, dict) else None
        if kind not in RICH_TEXT_CONTAINERS:
            yield _msg(f"unsupported type: {kind}", f"{p}/type")
            continue
        inner = container.get("elements")
        if not isinstance(inner, list):
            yield _msg("must provide elements", f"{p}/elements")
            continue
        if kind == "rich_text_list":
            yield from _rich_text(inner, f"{p}/elements")
            continue
        for j, element in enumerate(inner):
            q = f"{p}/elements/{j}"
            etype = element.get("type") if isinstance(element, dict) else None
            if etype not in RICH_TEXT_INLINE:
                yield _msg(f"unsupported type: {etype}", f"{q}/type")
                continue
            for required in RICH_TEXT_INLINE[etype]:
                if required not in element:
                    yield _msg(f"must provide {required}", f"{q}/{required}")
            if etype == "text" and not (isinstance(element.get("text"), str) and element["text"]):
                yield _msg("must be a non-empty string", f"{q}/text")


def block_problems(blocks: Any, max_blocks: int, pointer: str = "/blocks") -> list[str]:
    """Every limit `blocks` breaks, as Slack's `[ERROR]` lines (empty list = valid)."""
    if not isinstance(blocks, list):
        return [_msg("must be an array", pointer)]
    problems: list[str] = []
    if len(blocks) > max_blocks:
        problems.append(_msg(f"no more than {max_blocks} items allowed", pointer))
    ids = _Ids()
    for i, block in enumerate(blocks):
        problems.extend(_block(block, f"{pointer}/{i}", ids))
    return problems


def check_message(text: Any, blocks: Any, attachments: Any = None) -> Problem | None:
    """Validate a chat.postMessage / chat.update / chat.postEphemeral / response_url body."""
    has_text = isinstance(text, str) and text != ""
    if not has_text and not blocks and not attachments:
        return Problem("no_text")
    if has_text and len(text) > MAX_TEXT:
        return Problem("msg_too_long", [_msg(f"must be less than {MAX_TEXT + 1} characters", "/text")])
    if blocks is not None:
        problems = block_problems(blocks, MAX_MESSAGE_BLOCKS)
        if problems:
            return Problem("invalid_blocks", problems)
    return None


def check_view(view: Any) -> Problem | None:
    """Validate a views.open / views.update / views.push `view` (modal or home tab)."""
    if not isinstance(view, dict):
        return Problem("invalid_arguments", [_msg("must provide an object", "/view")])
    problems: list[str] = []
    kind = view.get("type")
    if kind not in ("modal", "home"):
        problems.append(_msg("must be one of modal or home", "/view/type"))
    if kind == "modal":
        problems.extend(_text_object(view.get("title"), MAX_VIEW_TEXT, "/view/title", plain_only=True))
    for key in ("submit", "close"):
        if key in view:
            problems.extend(_text_object(view[key], MAX_VIEW_TEXT, f"/view/{key}", plain_only=True))
    problems.extend(_too_long(view.get("private_metadata"), MAX_PRIVATE_METADATA, "/view/private_metadata"))
    problems.extend(_too_long(view.get("callback_id"), MAX_ID, "/view/callback_id"))
    problems.extend(block_problems(view.get("blocks"), MAX_VIEW_BLOCKS, "/view/blocks"))
    return Problem("invalid_blocks", problems) if problems else None


def with_ids(blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Copy of `blocks` with a block_id on every block and an action_id on every interactive element.

    Slack fills in random ids the app left out, and interactions always carry them, so stored messages need them.
    """
    if blocks is None:
        return None
    out: list[dict[str, Any]] = []
    for block in blocks:
        b = dict(block)
        b.setdefault("block_id", secrets.token_urlsafe(4))
        for key in ("elements", "element", "accessory"):
            if key not in b:
                continue
            if key == "elements" and isinstance(b[key], list):
                b[key] = [_with_action_id(e) for e in b[key]]
            elif isinstance(b[key], dict):
                b[key] = _with_action_id(b[key])
        out.append(b)
    return out


def _with_action_id(el: Any) -> Any:
    if isinstance(el, dict) and el.get("type") in INTERACTIVE and "action_id" not in el:
        return {**el, "action_id": secrets.token_urlsafe(4)}
    return el


def iter_elements(blocks: list[dict[str, Any]] | None) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(block, element) for every element in `blocks`: actions elements, section accessories, input elements."""
    for block in blocks or []:
        if isinstance(block.get("elements"), list) and block.get("type") in ("actions", "context_actions"):
            for el in block["elements"]:
                if isinstance(el, dict):
                    yield block, el
        for key in ("accessory", "element"):
            if isinstance(block.get(key), dict):
                yield block, block[key]
