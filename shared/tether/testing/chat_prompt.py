"""The prompt an OpenAI chat model reads for a chat completions request, and its tokens.

A request is rendered in one of OpenAI's published chat formats: harmony (the o-series,
gpt-5 and gpt-oss read it) or ChatML (gpt-4o and earlier), tools printed as the
TypeScript-like namespace both use, and the text between special tokens counted by the
model's tokenizer, each special token as one. Tests measure with it the real count that
the reservation bound of tether.models.tokens must cover, on the exact request body an
endpoint received.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from tether.models.tokens import encoding

ChatFormat = Literal["harmony", "chatml"]


@dataclass(frozen=True)
class Special:
    """A special token of the chat format, e.g. ``<|start|>``; one token wherever it is."""

    text: str


Part = str | Special


def prompt_tokens(request: dict[str, Any], encoding_name: str, chat_format: ChatFormat) -> int:
    """The tokens ``request`` (a chat completions body) becomes in ``chat_format``."""
    encode = encoding(encoding_name).encode_ordinary
    total, run = 0, ""
    for part in render(request, chat_format):
        if isinstance(part, Special):
            total += len(encode(run)) + 1 if run else 1
            run = ""
        else:
            run += part
    return total + (len(encode(run)) if run else 0)


def render(request: dict[str, Any], chat_format: ChatFormat) -> list[Part]:
    """``request`` as the model reads it, up to the header its answer follows."""
    messages: list[dict[str, Any]] = request.get("messages", [])
    names = {
        call["id"]: call["function"]["name"] for m in messages for call in m.get("tool_calls") or []
    }
    header = _instructions(request, messages, chat_format)
    parts: list[Part] = []
    if header:
        parts += _message(
            chat_format, "developer" if chat_format == "harmony" else "system", header
        )
    for message in messages:
        if message["role"] == "system":
            continue  # printed in the header above
        parts += _turn(chat_format, message, names)
    start = Special("<|start|>" if chat_format == "harmony" else "<|im_start|>")
    if chat_format == "harmony":
        return [*parts, start, "assistant"]
    return [*parts, start, "assistant", Special("<|im_sep|>")]


def _instructions(
    request: dict[str, Any], messages: list[dict[str, Any]], chat_format: ChatFormat
) -> str:
    sections = [m["content"] for m in messages if m["role"] == "system" and m.get("content")]
    if sections and chat_format == "harmony":
        sections.insert(0, "# Instructions")  # the system messages are the developer's
    tools = [t["function"] for t in request.get("tools") or [] if t.get("type") == "function"]
    if tools:
        lines = ["## functions\n", "namespace functions {\n"]
        for function in tools:
            lines += [f"// {line}" for line in (function.get("description") or "").splitlines()]
            if function.get("parameters"):
                lines.append(
                    f"type {function['name']} = (_: {_ts(function['parameters'], '')}) => any;\n"
                )
            else:
                lines.append(f"type {function['name']} = () => any;\n")
        lines.append("} // namespace functions")
        sections.append("# Tools\n\n" + "\n".join(lines))
    wanted = request.get("response_format") or {}
    if wanted.get("type") == "json_schema":
        spec = wanted["json_schema"]
        described = f"// {spec['description']}\n" if spec.get("description") else ""
        schema = json.dumps(spec.get("schema", {}), separators=(",", ":"), ensure_ascii=False)
        sections.append(f"# Response Formats\n\n## {spec['name']}\n\n{described}{schema}")
    return "\n\n".join(sections)


def _message(chat_format: ChatFormat, role: str, content: str) -> list[Part]:
    if chat_format == "harmony":
        return [Special("<|start|>"), role, Special("<|message|>"), content, Special("<|end|>")]
    return [Special("<|im_start|>"), role, Special("<|im_sep|>"), content, Special("<|im_end|>")]


def _turn(chat_format: ChatFormat, message: dict[str, Any], names: dict[str, str]) -> list[Part]:
    role, content = message["role"], message.get("content") or ""
    if role == "tool":
        name = names.get(message.get("tool_call_id") or "", "unknown")
        if chat_format == "harmony":
            return [
                Special("<|start|>"),
                f"functions.{name} to=assistant",
                Special("<|channel|>"),
                "commentary",
                Special("<|message|>"),
                content,
                Special("<|end|>"),
            ]
        return _message(chat_format, f"functions.{name}", content)
    if role != "assistant":
        return _message(chat_format, role, content)
    parts: list[Part] = []
    if content:
        if chat_format == "harmony":
            parts += [Special("<|start|>"), "assistant", Special("<|channel|>"), "final"]
            parts += [Special("<|message|>"), content, Special("<|end|>")]
        else:
            parts += _message(chat_format, "assistant", content)
    for call in message.get("tool_calls") or []:
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        if chat_format == "harmony":
            parts += [Special("<|start|>"), "assistant", Special("<|channel|>")]
            parts += [f"commentary to=functions.{name} ", Special("<|constrain|>"), "json"]
            parts += [Special("<|message|>"), arguments, Special("<|call|>")]
        else:
            parts += _message(chat_format, f"assistant to=functions.{name}", arguments)
    return parts


def _default(spec: dict[str, Any]) -> str | None:
    if "default" not in spec:
        return None
    value = spec["default"]
    if isinstance(value, str):
        return f"default: {value}" if "enum" in spec else f'default: "{value}"'
    return f"default: {json.dumps(value, separators=(',', ':'), ensure_ascii=False)}"


def _trailing(variant: dict[str, Any], skip_description: bool = False) -> str:
    said = [] if skip_description or not variant.get("description") else [variant["description"]]
    default = _default(variant)
    said += [default] if default else []
    return f" // {' '.join(said)}" if said else ""


def _nullable(spec: dict[str, Any], typed: str) -> str:
    return f"{typed} | null" if spec.get("nullable") and "null" not in typed else typed


def _ts(schema: dict[str, Any], indent: str) -> str:
    """A JSON schema as harmony's renderer prints a parameter type (openai/harmony,
    json_schema_to_typescript): titles, descriptions, examples and defaults as
    comments, oneOf as variants; a $ref, anyOf or allOf it does not follow is "any"."""
    if isinstance(schema.get("oneOf"), list):
        return "".join(
            f"\n{indent} | {_nullable(v, _ts(v, indent + '   '))}{_trailing(v)}"
            for v in schema["oneOf"]
        )
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join("number" if k == "integer" else str(k) for k in kind)
    if kind == "object":
        return _object(schema, indent)
    if kind == "string" and schema.get("enum"):
        return " | ".join(f'"{v}"' for v in schema["enum"] if isinstance(v, str))
    if kind == "array":
        return f"{_ts(schema['items'], indent)}[]" if "items" in schema else "Array<any>"
    return {"string": "string", "number": "number", "integer": "number", "boolean": "boolean"}.get(
        str(kind), "any"
    )


def _object(schema: dict[str, Any], indent: str) -> str:
    out = f"{indent}// {schema['description']}\n" if schema.get("description") else ""
    out += "{\n"
    required = set(schema.get("required") or [])
    for key, val in (schema.get("properties") or {}).items():
        optional = "" if key in required else "?"
        if val.get("title"):
            out += f"{indent}// {val['title']}\n{indent}//\n"
        variants = val.get("oneOf")
        if not isinstance(variants, list) and val.get("description"):
            out += f"{indent}// {val['description']}\n"
        for example in val.get("examples") or []:
            if isinstance(example, str):
                out += f"{indent}// Examples:\n" if example == val["examples"][0] else ""
                out += f'{indent}// - "{example}"\n'
        if isinstance(variants, list):
            first = variants[0].get("description") if variants else None
            above = bool(val.get("description")) and val.get("description") != first
            out += f"{indent}// {val['description']}\n" if above else ""
            default = _default(val)
            out += f"{indent}// {default}\n" if default else ""
            out += f"{indent}{key}{optional}:\n"
            for i, v in enumerate(variants):
                typed = _nullable(v, _ts(v, indent + "   "))
                out += f"{indent} | {typed}{_trailing(v, skip_description=i == 0 and above)}\n"
            out += f"{indent},\n"
            continue
        typed = _nullable(val, _ts(val, indent + "    "))
        default = _default(val)
        out += f"{indent}{key}{optional}: {typed}," + (f" // {default}" if default else "") + "\n"
    return out + f"{indent}}}"
