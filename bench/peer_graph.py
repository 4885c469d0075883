"""The peer's agent: LangGraph's agent loop checkpointed to PostgreSQL by PostgresSaver.

What a team builds instead of Tether for a durable agent: a StateGraph with a
model node and LangGraph's prebuilt ToolNode, ``tools_condition`` between them,
compiled with PostgresSaver, one thread per run. Its model is the same instant
script as Tether's bench agents (bench.agents.calling): it asks for the tool
``steps=N`` times, then answers, so a run is N tool calls and N + 1 model
calls. ``text200`` returns 200 bytes, as bench.agents' ``text200`` does for
``bench_peer``, and ``blob`` 4 KB, as ``bench_long``'s does.

Each model call stamps the time it began (``Graph.stamps``), so the harness can
read a step's time as the gap between two model calls, as bench.longrun reads
Tether's between two decisions. With ``count_bytes``, the connection's cursors
add up what the saver sends PostgreSQL (statements and their parameters, as
bench.longrun adds up the commands clients send Redis), readable per step from
``Graph.sent_at_stamps``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import psycopg
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

Durability = Literal["sync", "async"]
_STEPS = re.compile(r"steps=(\d+)")


@tool
def text200(i: int) -> str:
    """Return 200 bytes of text, at once."""
    return f"{i:08d}" * 25


@tool
def blob(i: int) -> str:
    """Return 4 KB of text, at once."""
    return f"{i:08d}" * 512


def steps_asked(messages: Sequence[AnyMessage]) -> int:
    for message in messages:
        if isinstance(message, HumanMessage) and isinstance(message.content, str):
            found = _STEPS.search(message.content)
            if found:
                return int(found.group(1))
    return 1


class CountingCursor(psycopg.Cursor[DictRow]):
    """A cursor that adds up the bytes of each statement and its parameters it sends."""

    sent = 0

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> CountingCursor:
        CountingCursor.sent += _size(query) + sum(_size(p) for p in _values(params))
        super().execute(query, params, **kwargs)
        return self

    def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> None:
        rows = list(params_seq)
        for params in rows:
            CountingCursor.sent += _size(query) + sum(_size(p) for p in _values(params))
        super().executemany(query, rows, **kwargs)


def _values(params: Any) -> Iterable[Any]:
    if params is None:
        return ()
    if isinstance(params, dict):
        return params.values()
    return params  # type: ignore[no-any-return]


def _size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, Jsonb):
        return len(json.dumps(value.obj))
    return len(str(value).encode())


class Graph:
    """The compiled agent loop on one PostgreSQL connection (the saver's tables set up)."""

    def __init__(self, url: str, tool_name: str = "text200", *, count_bytes: bool = False) -> None:
        chosen = {"text200": text200, "blob": blob}[tool_name]
        self.conn = psycopg.Connection[DictRow].connect(
            url,
            autocommit=True,
            prepare_threshold=0,
            row_factory=dict_row,
            cursor_factory=CountingCursor if count_bytes else None,
        )
        self.saver = PostgresSaver(self.conn)
        self.saver.setup()
        self.stamps: list[float] = []
        self.sent_at_stamps: list[int] = []
        self.count_bytes = count_bytes
        tool_name_ = chosen.name

        def model(state: MessagesState) -> dict[str, list[AnyMessage]]:
            self.stamps.append(time.perf_counter())
            if count_bytes:
                self.sent_at_stamps.append(CountingCursor.sent)
            messages = state["messages"]
            done = sum(1 for m in messages if isinstance(m, AIMessage))
            if done < steps_asked(messages):
                call = {"name": tool_name_, "args": {"i": done}, "id": f"call_{done}"}
                return {"messages": [AIMessage(content="", tool_calls=[call])]}
            return {"messages": [AIMessage(content=f"done after {done} tool steps")]}

        builder = StateGraph(MessagesState)
        builder.add_node("model", model)
        builder.add_node("tools", ToolNode([chosen]))
        builder.add_edge(START, "model")
        builder.add_conditional_edges("model", tools_condition, ["tools", END])
        builder.add_edge("tools", "model")
        self.graph = builder.compile(checkpointer=self.saver)

    def run(self, steps: int, durability: Durability) -> float:
        """Run one new thread of ``steps`` tool calls to its answer; seconds it took."""
        self.stamps.clear()
        self.sent_at_stamps.clear()
        config: Any = {
            "configurable": {"thread_id": uuid.uuid4().hex},
            # A step is two supersteps (model, tools): LangGraph stops at 25 by default.
            "recursion_limit": 2 * steps + 10,
        }
        began = time.perf_counter()
        out = self.graph.invoke(
            {"messages": [HumanMessage(content=f"steps={steps}")]}, config, durability=durability
        )
        took = time.perf_counter() - began
        answer = out["messages"][-1]
        if not isinstance(answer, AIMessage) or answer.content != f"done after {steps} tool steps":
            raise RuntimeError(
                f"the peer's {steps}-step thread ended without its answer: {answer!r}; "
                "the graph or the saver did not run the loop to its end"
            )
        return took

    def close(self) -> None:
        self.conn.close()
