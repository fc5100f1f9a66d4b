"""NamespacedClient: any client whose keys, and lock, queue and rendezvous names, live under a prefix of their own.

`connect(..., namespace="run-42")` (or `?namespace=run-42` in a Redis URL) gives a client that sees only its
namespace: every key it names is stored as "run-42:" + key, `keys()` lists and `size()` counts only the keys
under the prefix (and shows them without it), and locks, queues and rendezvous are namespaced the same way.
So several runs, tools or tenants can share one database and each clean up exactly what it wrote
(`delete_namespace`). A namespace never contains "{" or "}", so it cannot collide with Redis Cluster hash tags.
"""

from __future__ import annotations

from typing import Any, Generic

from kvmgr.client.operations import AnswerObserver, Call, Operations, Transport
from kvmgr.errors import ConfigError, KeyNotFound
from kvmgr.protocol.operations import BY_NAME

SEPARATOR = ":"
NAMED = frozenset({"key", "name"})  # parameters that name one key, lock, queue or rendezvous
CLEANUP_PAGE = 1000


def check_namespace(namespace: object) -> str:
    """A namespace: a non-empty str without "{" or "}" that UTF-8 can encode; ConfigError otherwise."""
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError(f"a namespace must be a non-empty str, not {namespace!r:.40}")
    if "{" in namespace or "}" in namespace:
        raise ConfigError(f"namespace {namespace!r} contains a brace: braces are Redis Cluster hash tags")
    try:
        namespace.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"namespace {namespace!r} cannot be encoded as UTF-8") from None
    return namespace


class NamespacedClient(Operations, Generic[Transport]):
    """`inner`, seeing only the keys (and lock, queue and rendezvous names) under `namespace` + ":"."""

    def __init__(self, inner: Transport, namespace: str) -> None:
        self.inner = inner
        self.namespace = check_namespace(namespace)
        self.prefix = namespace + SEPARATOR
        self.name, self.timeout, self.retry = inner.name, inner.timeout, inner.retry

    def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt on the inner client, its keys under the prefix; size counts only the namespace's keys."""
        if method == "size":
            return sum(1 for _ in self.inner.iter_keys(self.prefix))
        try:
            return self._inbound(method, self.inner._call(method, self._outbound(method, args), timeout))
        except KeyNotFound as exc:
            raise KeyNotFound(self._strip(exc.key)) from None

    def _run_pipeline(self, calls: list[Call], on_answer: AnswerObserver | None = None) -> list[Any]:
        """The inner client's pipeline of the calls under the prefix, every answer told back without it."""
        outbound = [(method, self._outbound(method, args)) for method, args in calls]
        observer = None if on_answer is None else self._observer(calls, outbound, on_answer)
        results = self.inner._run_pipeline(outbound, observer)
        return [self._answer(method, result) for (method, _), result in zip(calls, results, strict=True)]

    def _observer(self, calls: list[Call], outbound: list[Call], on_answer: AnswerObserver) -> AnswerObserver:
        """Tell on_answer of each answer as the caller made the call (an outbound call is matched back by identity)."""
        by_outbound = {id(sent): given for (_, sent), (_, given) in zip(outbound, calls, strict=True)}

        def tell(method: str, args: tuple, status: str, result: Any, start: int, end: int | None) -> None:
            on_answer(method, by_outbound.get(id(args), args), status, self._answer(method, result), start, end)

        return tell

    def _answer(self, method: str, result: Any) -> Any:
        if isinstance(result, KeyNotFound):
            return KeyNotFound(self._strip(result.key))
        return result if isinstance(result, Exception) else self._inbound(method, result)

    def _outbound(self, method: str, args: tuple) -> tuple:
        """The call's arguments with every key and name under the prefix."""
        params = BY_NAME[method].params
        if "prefix" in params and not args:
            args = (None,)  # keys() of the whole store: of the whole namespace here
        return tuple(self._put_under(method, param, arg) for param, arg in zip(params, args, strict=False))

    def _put_under(self, method: str, param: str, arg: Any) -> Any:
        prefix = self.prefix
        if param in NAMED:
            return prefix + arg
        if param == "keys":
            return [prefix + key for key in arg]
        if param == "mapping":
            return {prefix + key: value for key, value in arg.items()}
        if param == "prefix":
            return prefix + (arg or "")
        if param == "after" and method == "keys" and arg is not None:
            return prefix + arg
        return arg

    def _inbound(self, method: str, result: Any) -> Any:
        """A result with the prefix taken off the keys it names (keys, get_many, store_many)."""
        if method == "keys":
            return [self._strip(key) for key in result]
        if method in ("get_many", "store_many"):
            return {self._strip(key): value for key, value in result.items()}
        return result

    def _strip(self, key: str) -> str:
        return key[len(self.prefix):] if key.startswith(self.prefix) else key

    def delete_namespace(self, page: int = CLEANUP_PAGE) -> int:
        """Delete every key of the namespace (a page of keys per call), then, on a backend that keeps bookkeeping about
        keys and names (Redis: versions, lock token counters), that too; how many keys were deleted."""
        deleted = 0
        while True:
            keys = self.keys(limit=page)
            for key in keys:
                deleted += bool(self.delete(key))
            if len(keys) < page:
                break
        forget = getattr(self.inner, "forget_namespace", None)
        if forget is not None:
            forget(self.prefix)
        return deleted

    def session(self) -> Operations:
        """The inner client's session, in the same namespace."""
        return NamespacedClient(self.inner.session(), self.namespace)

    def close(self) -> None:
        """Close the inner client."""
        self.inner.close()


def with_namespace(client: Transport, namespace: str | None) -> Transport | NamespacedClient[Transport]:
    """The client itself, or, given a namespace, the client seeing only that namespace."""
    return client if namespace is None else NamespacedClient(client, namespace)

