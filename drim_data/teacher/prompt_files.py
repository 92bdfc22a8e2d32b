"""Prompts live as versioned files in `drim_data/teacher/prompts/`; a prompt's version is part of every cache key."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROMPTS = Path(__file__).parent / "prompts"


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    version: str  # "<name>.v<N>-<sha256 prefix>": editing a file without bumping N still changes the key

    def render(self, **values: object) -> str:
        return self.text.format(**values)


@cache
def load_prompt(name: str) -> Prompt:
    files = sorted(PROMPTS.glob(f"{name}.v*.md"), key=lambda p: int(re.search(r"\.v(\d+)\.md$", p.name).group(1)))
    if not files:
        raise FileNotFoundError(f"no prompt file {name}.v<N>.md in {PROMPTS}")
    text = files[-1].read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Prompt(name, text.strip(), f"{files[-1].stem}-{digest}")
