"""Building SQL for ClickHouse without pasting values into it: every value a server-side query parameter."""

from __future__ import annotations

from typing import Any


class QueryParams:
    """Server-side query parameters ({name:Type}), named in order; ``values`` goes to the client as ``parameters``."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, value: Any, ch_type: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{ch_type}}}"
