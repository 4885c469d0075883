"""Memory across interactions: conversation threads and long-term memory per subject.

- ``threads``: runs on one thread see its history and run one at a time, in order;
- ``window``: fitting a thread's history into an agent's token window;
- ``longterm``: the built-in ``remember`` / ``recall`` tools over a store per agent and subject;
- ``forget``: removing a thread's or a subject's data, for privacy requests.
"""

from tether.memory.longterm import MemoryConfig
from tether.memory.window import Turn

__all__ = ["MemoryConfig", "Turn"]
