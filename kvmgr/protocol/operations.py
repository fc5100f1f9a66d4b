"""The operation table: every operation of the store declared once, with the properties everything else derives.

The wire's exposed names, which calls a client may repeat after a broken connection, what a history
records, which scenario steps need a key or a value, the alice/bob flags and the stress mix all come
from OPERATIONS. Adding an operation is one entry here plus one implementation per backend (the
Store's method and the Redis client's `_do_` method, with the same parameters; a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class OpSpec:
    """One operation: its parameters and how the rest of kvmgr treats it."""

    name: str
    params: tuple[str, ...] = ()  # positional parameters, in order
    optional: int = 0  # how many of the last params may be left out
    mutates: bool = False  # changes data: journaled in durable mode
    safe_to_repeat: bool = False  # repeated once on a new connection when the connection broke mid-call
    recorded_as: str | None = None  # the per-key history operation it is recorded as (None: not recorded)
    in_scenarios: bool = True  # a scenario step (and alice/bob --op) may name it
    defaults: tuple[object, ...] = ()  # what the optional params mean when left out, in order (None for each if not given)
    client_params: tuple[str, ...] = ()  # optional parameters the client handles itself, never sent (pop's default)
    blocks: bool = False  # may wait for others (up to its timeout): the client sends it on a connection of its own
    summary: str = ""

    @property
    def needs_key(self) -> bool:
        """True if the operation works on one key."""
        return "key" in self.params

    @property
    def needs_value(self) -> bool:
        """True if the operation writes a value."""
        return "value" in self.params

    @property
    def optional_defaults(self) -> tuple[object, ...]:
        """The default of each optional parameter, in order."""
        return self.defaults or (None,) * self.optional

    @property
    def least_args(self) -> int:
        """How many positional arguments a call must give."""
        return len(self.params) - self.optional


OPERATIONS: tuple[OpSpec, ...] = (
    OpSpec(name="store", params=("key", "value", "ttl"), optional=1, mutates=True, safe_to_repeat=True, recorded_as="store",
           summary='set key (expiring after ttl seconds, if given); "saved" if it was new, "updated" if it overwrote a value'),
    OpSpec(name="get", params=("key",), safe_to_repeat=True, recorded_as="get",
           summary="the value of key; KeyNotFound if absent"),
    OpSpec(name="delete", params=("key",), mutates=True, recorded_as="delete", summary="remove key; True if it existed"),
    OpSpec(name="exists", params=("key",), safe_to_repeat=True, summary="True if key is present"),
    OpSpec(name="keys", params=("prefix", "limit", "after"), optional=3, safe_to_repeat=True,
           summary="the keys in sorted order, optionally those with a prefix, after a key, at most limit"),
    OpSpec(name="size", safe_to_repeat=True, summary="how many keys the store holds"),
    OpSpec(name="cas", params=("key", "expected", "value"), mutates=True, recorded_as="cas",
           summary="set key to value only if it holds expected (None: only if absent); True if it swapped"),
    OpSpec(name="get_many", params=("keys",), safe_to_repeat=True, recorded_as="get",
           summary="the values of the keys that are present, read in one atomic step"),
    OpSpec(name="store_many", params=("mapping",), mutates=True, safe_to_repeat=True, recorded_as="store",
           summary='store every pair in one atomic step; key -> "saved"/"updated"'),
    OpSpec(name="incr", params=("key", "by"), optional=1, defaults=(1,), mutates=True, recorded_as="incr",
           summary="add by to the number at key (absent: 0) in one step; the new number; WrongType if not a number"),
    OpSpec(name="decr", params=("key", "by"), optional=1, defaults=(1,), mutates=True, recorded_as="decr",
           summary="subtract by from the number at key (absent: 0) in one step; the new number"),
    OpSpec(name="add", params=("key", "value", "ttl"), optional=1, mutates=True, recorded_as="add",
           summary="store only if key is absent; True if it stored"),
    OpSpec(name="pop", params=("key",), client_params=("default",), mutates=True, recorded_as="pop",
           summary="remove key and return its value in one step; default (or KeyNotFound) if absent"),
    OpSpec(name="expire", params=("key", "ttl"), mutates=True, safe_to_repeat=True, recorded_as="expire",
           summary="make key expire ttl seconds from now; False if absent"),
    OpSpec(name="ttl", params=("key",), safe_to_repeat=True,
           summary="seconds until key expires, None if it never does; KeyNotFound if absent"),
    OpSpec(name="persist", params=("key",), mutates=True, recorded_as="persist",
           summary="remove key's expiry; True if it had one"),
    OpSpec(name="info", safe_to_repeat=True, in_scenarios=False,
           summary="what the server is doing: a dict of figures (uptime_seconds, keys, connected_clients, ...)"),
    OpSpec(name="quit", summary="ask the server to shut down gracefully (kvmgr's own server only)"),
    OpSpec(name="rendezvous", params=("name", "parties", "timeout"), optional=1, in_scenarios=False, blocks=True,
           summary="block until `parties` callers have arrived under name, then release them together"),
    OpSpec(name="lock_acquire", params=("name", "lease", "timeout"), optional=1, in_scenarios=False, blocks=True,
           summary="block until the lock is held (for lease seconds); its fencing token; LockTimeout"),
    OpSpec(name="lock_release", params=("name", "token"), in_scenarios=False,
           summary="free the lock held with token; LockLost if it is not held with it"),
    OpSpec(name="lock_extend", params=("name", "token", "lease"), in_scenarios=False,
           summary="hold the lock for lease seconds from now; LockLost if it is not held with token"),
    OpSpec(name="lock_locked", params=("name",), safe_to_repeat=True, in_scenarios=False,
           summary="True if someone holds the lock"),
    OpSpec(name="get_versioned", params=("key",), safe_to_repeat=True, in_scenarios=False,
           summary="(value or None, version): the key's value and the revision of its last change"),
    OpSpec(name="wait", params=("key", "after", "timeout"), optional=1, in_scenarios=False, blocks=True,
           summary="block until the key's version is above after; (value or None, version); WaitTimeout"),
    OpSpec(name="queue_put", params=("name", "value"), mutates=True, in_scenarios=False,
           summary="append value to the queue; its length after the put"),
    OpSpec(name="queue_get", params=("name", "timeout"), optional=1, in_scenarios=False, blocks=True,
           summary="block until the queue has an item and take the first; QueueEmpty"),
    OpSpec(name="queue_size", params=("name",), safe_to_repeat=True, in_scenarios=False,
           summary="how many items the queue holds"),
)

BY_NAME: dict[str, OpSpec] = {spec.name: spec for spec in OPERATIONS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
SCENARIO_OPERATIONS: tuple[str, ...] = tuple(spec.name for spec in OPERATIONS if spec.in_scenarios)
SAFE_TO_REPEAT: frozenset[str] = frozenset(spec.name for spec in OPERATIONS if spec.safe_to_repeat)
RECORDED: frozenset[str] = frozenset(spec.name for spec in OPERATIONS if spec.recorded_as)
HISTORY_OPERATIONS: tuple[str, ...] = tuple(dict.fromkeys(spec.recorded_as for spec in OPERATIONS if spec.recorded_as))
"""The per-key operations a history holds (store, get, delete, cas, incr, ...): batches are recorded key by key."""
EXPIRY_OPERATIONS: frozenset[str] = frozenset({"expire", "persist"})
"""History operations about expiry alone: outside the register model (a key they touch is not checked)."""
