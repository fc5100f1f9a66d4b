"""The three Redis URL forms kvmgr reads, and the options kvmgr itself adds to them.

- `redis://[[user]:password@]host:port/DB` (or rediss://): one Redis server, parsed by redis-py.
- `redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE/DB`: the Sentinels watching SERVICE; the
  client asks them for the current primary. The user and password are the data nodes'; `?sentinel_password=`
  is the Sentinels' own, if they have one.
- `redis+cluster://[user:password@]host:port[,host:port...]`: any nodes of a Redis Cluster (database 0 only).

Options kvmgr reads on any of them (redis-py never sees them): `durability=replicated` (acknowledge a write only
once `WAIT 1` confirms a replica has it) and `replica_timeout=SECONDS` (how long that WAIT waits, default 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from kvmgr.errors import ConfigError

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
PLAIN_SCHEMES = ("redis", "rediss")
SCHEMES = (*PLAIN_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME)
DURABILITY_LEVELS = ("primary", "replicated")
KVMGR_OPTIONS = ("durability", "replica_timeout")
DEFAULT_REPLICA_TIMEOUT = 1.0  # seconds a replicated write waits in WAIT for a replica's acknowledgement
SECRET_OPTIONS = ("password", "sentinel_password")


@dataclass(frozen=True, kw_only=True)
class RedisTarget:
    """What a Redis URL names: the scheme, its hosts, and the options for the data connections."""

    scheme: str
    url: str  # the URL without kvmgr's own options (what redis-py reads, for redis:// and rediss://)
    hosts: tuple[tuple[str, int], ...] = ()  # the Sentinels' or the cluster nodes' addresses
    service: str = ""  # the Sentinel service name
    database: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    replicated: bool = False  # durability=replicated
    replica_timeout: float = DEFAULT_REPLICA_TIMEOUT


def redact(url: str) -> str:
    """The URL with its passwords (the data nodes' and ?sentinel_password=) replaced by ***, for messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL: {exc}") from None
    if password is not None:
        user = parts.username or ""
        parts = parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}")
    options = parse_qsl(parts.query, keep_blank_values=True)
    if any(name in SECRET_OPTIONS for name, _ in options):
        parts = parts._replace(query=urlencode([(name, "***" if name in SECRET_OPTIONS else value) for name, value in options]))
    return urlunsplit(parts)


def parse_target(url: str) -> RedisTarget:
    """Parse any of the three URL forms; ConfigError naming what is wrong (passwords redacted)."""
    where = redact(url)
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"bad Redis URL {where!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    options = parse_qsl(parts.query, keep_blank_values=True)
    ours = dict((name, value) for name, value in options if name in KVMGR_OPTIONS)
    rest = [(name, value) for name, value in options if name not in KVMGR_OPTIONS]
    replicated, replica_timeout = _durability(ours, where)
    if parts.scheme in PLAIN_SCHEMES:
        plain = urlunsplit(parts._replace(query=urlencode(rest)))
        return RedisTarget(scheme=parts.scheme, url=plain, replicated=replicated, replica_timeout=replica_timeout)
    extra = {name: value for name, value in rest if name != "sentinel_password"}
    if extra:
        raise ConfigError(f"bad Redis URL {where!r}: unknown option {', '.join(extra)}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    hosts = tuple(_host_port(item, where) for item in hostlist.split(","))
    path = [piece for piece in parts.path.split("/") if piece]
    target = RedisTarget(scheme=parts.scheme, url=url, hosts=hosts, username=unquote(user) or None, password=unquote(password) or None,
                         replicated=replicated, replica_timeout=replica_timeout)
    if parts.scheme == CLUSTER_SCHEME:
        if path not in ([], ["0"]) or "sentinel_password" in dict(rest):
            raise ConfigError(f"bad Redis URL {where!r}: a cluster URL names nodes only (a cluster has database 0 alone)")
        return target
    if len(path) not in (1, 2) or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError(f"bad Redis URL {where!r}: expected redis+sentinel://host:port[,host:port]/SERVICE/DB")
    return replace(target, service=unquote(path[0]), database=int(path[1]) if len(path) == 2 else 0,
                   sentinel_password=dict(rest).get("sentinel_password") or None)


def _durability(options: dict[str, str], where: str) -> tuple[bool, float]:
    """(replicated?, the WAIT timeout in seconds) from ?durability= and ?replica_timeout=."""
    level = options.get("durability", "primary")
    if level not in DURABILITY_LEVELS:
        raise ConfigError(f"bad Redis URL {where!r}: durability must be one of {', '.join(DURABILITY_LEVELS)}, not {level!r}")
    try:
        seconds = float(options.get("replica_timeout", DEFAULT_REPLICA_TIMEOUT))
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise ConfigError(f"bad Redis URL {where!r}: replica_timeout must be a number of seconds above 0 (at most 3600)")
    return level == "replicated", seconds


def _host_port(item: str, where: str) -> tuple[str, int]:
    """One 'host:port' of a Sentinel or cluster URL."""
    host, sep, port = item.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"bad Redis URL {where!r}: {item!r} is not host:port")
    return host.strip("[]"), int(port)
