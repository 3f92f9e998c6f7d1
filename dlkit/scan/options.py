"""The scan's policy: how long a silent lease lives, how often a point may crash, when it is stuck.

One value per scan, not per worker: every worker of a scan judges the same leases, so the policy is recorded
in the manifest when the scan is created and read from it by every engine, worker and array task. A later
``run`` that asks for another value is refused, naming the flag and the scan's value::

    ScanOptions()                                   # the defaults, written once, here
    ScanOptions(lease_timeout=30).heartbeat_interval   # 6.0 s: a holder beats 5 times per lease timeout
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ScanOptions", "OptionsError"]


class OptionsError(ValueError):
    """A scan option out of range, or one that contradicts the scan's recorded policy."""


#: The command-line flag of each option (for messages).
_FLAGS = {"lease_timeout": "--lease-timeout", "max_retries": "--max-retries", "stuck_after": "--stuck-after"}


@dataclass(frozen=True)
class ScanOptions:
    """A scan's lease and retry policy.

    ``lease_timeout``: seconds without a heartbeat after which another worker takes a point over.
    ``max_retries``: crashes of a point that are retried (the next one fails it).
    ``stuck_after``: interruptions in a row without a new completed epoch that make a point ``stuck``.
    """

    lease_timeout: float = 120.0
    max_retries: int = 2
    stuck_after: int = 3

    def __post_init__(self):
        if not self.lease_timeout > 0:
            raise OptionsError(f"--lease-timeout {self.lease_timeout}: must be > 0 seconds")
        for name in ("max_retries", "stuck_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "stuck_after" else 0):
                raise OptionsError(f"{_FLAGS[name]} {value!r}: expected an integer >= "
                                   f"{1 if name == 'stuck_after' else 0}")
        object.__setattr__(self, "lease_timeout", float(self.lease_timeout))

    @property
    def heartbeat_interval(self) -> float:
        """How often a holder refreshes its heartbeat: 5 beats per lease timeout, between 0.05 and 30 s."""
        return max(0.05, min(30.0, self.lease_timeout / 5))

    @property
    def resubmit_delay(self) -> float:
        """How long an engine waits before it gives a point whose task was lost to a new task: long enough
        for a live holder's heartbeat to show, short enough not to idle."""
        return min(self.lease_timeout, 5.0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping | None) -> "ScanOptions":
        """The recorded policy (an older scan's manifest has none: the defaults)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in fields})

    def merged(self, **asked) -> "ScanOptions":
        """These options with the ``asked`` ones (None: not asked) put in; for a new scan."""
        return dataclasses.replace(self, **{k: v for k, v in asked.items() if v is not None})

    def check(self, scan: str, **asked) -> None:
        """Refuse an ``asked`` value (None: not asked) that differs from this recorded policy."""
        for name, value in asked.items():
            if value is not None and value != getattr(self, name):
                raise OptionsError(f"{_FLAGS[name]} {value:g}: scan {scan!r} was created with {_FLAGS[name]} "
                                   f"{getattr(self, name):g}, which all its workers use; leave the flag out "
                                   "(or start another scan with --name)")
