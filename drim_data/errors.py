"""The three ways work can fail, told apart once: an item's bad input, a run-level fault, an interrupt.

- `Drop`: this item cannot be used (its reason is what `status` counts); the run goes on without it.
- `RunFault` (a `DrimError`): nothing more can succeed (no key, refused credentials, no server, no disk, a bad
  recipe value); the run stops before anything more is marked done, with one line and a non-zero exit.
- `KeyboardInterrupt`: the run stops cleanly; nothing is recorded as an item error and nothing is exported.
"""


class DrimError(Exception):
    """A problem the user can fix (bad recipe, locked database, tampered version...)."""


class RunFault(DrimError):
    """A fault of the whole run, not of one item: stop now and mark nothing more done."""


class Drop(Exception):
    """One item's input is unusable: the item is dropped with `reason` (a short identifier) and `detail`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
