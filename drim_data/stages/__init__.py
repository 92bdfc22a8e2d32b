"""Pipeline stages. `ORDER` is the one list of them, in the order they run; export follows the last.

The runner, `status`, the resets and `--until` all read it. Each stage module has a NAME, a VERSION (part of its
fingerprint), `run(ctx) -> StageStats` and `validate(con)`; `contract.py` holds what they share.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ORDER = ("ingest", "mine", "ground", "name", "generate", "verify", "trajectories")


def modules() -> dict[str, ModuleType]:
    """The stage modules in order, imported on first use (the CLI's other commands need none of them)."""
    return {name: importlib.import_module(f"drim_data.stages.{name}") for name in ORDER}


def sql_order(column: str = "stage") -> str:
    """A DuckDB expression that sorts rows by their stage's place in `ORDER`."""
    return f"list_position([{', '.join(repr(n) for n in ORDER)}], {column})"
