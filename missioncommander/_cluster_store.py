"""The cluster's shared state in Redis: leases, sessions, and their streams.

Every rule that must hold across nodes runs inside Redis, in one Lua script
per operation, so no two nodes can interleave halfway through one:

- ``lease:{id}``: the node that holds client ``id`` now (``SET NX`` with an
  expiry that the holder renews).  Every session write checks it, so a node
  that lost its lease (cut off from Redis for longer than ``lease_ttl``)
  cannot write once another node has taken the client over.
- ``sess:{id}``: the session (``token``; ``out_seq``, the last message
  numbered to the client; ``in_taken``, the last message from the client
  whose callbacks returned; ``in_handed``, the last one handed to callbacks
  while one before it was still being answered (``concurrent_requests``);
  ``suspect`` and ``suspect_to``, what a holder that died may have handed
  to its callbacks unrecorded; ``node``, its last holder; ``max_frame``
  and ``version``, from the client's HELLO; ``out_bytes``, the bytes of
  the messages in ``out:{id}``, and ``z{seq}``, each one's size, for
  ``max_queued_bytes``: a trim subtracts and deletes those of the entries
  it removed, since ``XTRIM`` says only how many).
- ``out:{id}``: a stream of the messages to the client that it has not
  acknowledged, each entry's id its sequence number (``{seq}-0``), trimmed as
  acknowledgements arrive: what a node that takes the client over resends.
- ``asks:{id}``: the requests to the client from nodes that did not hold
  it as they asked (or let it go before the reply came): request id ->
  the asking node, which the holder passes the reply on to; it lives as
  long as the session.
- ``clients``: a hash of every client id in the cluster to its node (empty
  while no node holds it; an entry whose session expired, or whose holder's
  lease ran out, is mended when the hash is read); ``node:{holder}``: a
  node's presence (where it listens), with an expiry; ``named:{node_id}``:
  the holder that renewed last under that node id, with an expiry (two
  nodes given one id take turns writing it, and each sees the other's).

Numbers are given out by Redis (``HINCRBY``), so every node numbers a
client's messages from one counter.  Notices go over pub/sub to the channel
of the node that holds the client (``notice``); a notice that is lost
(pub/sub gives no guarantee) costs only time, since the holder reads the
stream again whenever it (re)subscribes or sees a gap; and it subscribes
again when a probe it publishes to itself does not come back (a pub/sub
connection that died without a word).  A reply to a
request another node sent goes to the channel of the node that asked
(``asks:{id}``, a hash of request id to asker, written as the request is
stored: ``pass_reply``); it is not kept: lost, its request times out.  The
news that a session ended for good (``e``, from the scripts that end or
replace it) goes to every node over ``ended``, for the nodes whose requests
were stored in it.

The store is synchronous and thread-safe (redis-py's connection pool); it
raises ``ClusterUnavailable`` when Redis cannot be reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from . import _config as cfg
from ._errors import ClusterUnavailable
from ._frames import MESSAGE_OVERHEAD

#: Leases and presences live this long unless renewed (a third of it apart).
DEFAULT_LEASE_TTL = 6.0
#: Commands sent in one pipeline when a node reads many clients at once.
BATCH = 500

_T = TypeVar("_T")

#: What cluster mode says where redis-py is not installed: the command for
#: an install from PyPI, and for one from a checkout, where the first would
#: fetch whatever PyPI holds under that name.
NEEDS_REDIS = (
    "cluster mode needs the redis package, the cluster extra: pip install 'missioncommander[cluster]' "
    "(installed from a checkout: pip install '.[cluster]' in it)"
)


def import_redis() -> Any:
    """redis-py (the ``cluster`` extra), or an ``ImportError`` that says how
    to install it: the library runs without it."""
    try:
        import redis  # noqa: PLC0415
    except ImportError:
        raise ImportError(NEEDS_REDIS, name="redis") from None
    return redis


def cluster_url(value: Any, name: str) -> str | None:
    """The ``cluster`` setting: None, or a Redis URL, refused at once where
    redis-py is missing (an ``ImportError`` when it is set, not at ``start()``,
    where a restored or configured server would first find out)."""
    url = cfg.redis_url(value, name)
    if url is not None:
        import_redis()
    return url


_CLAIM = """
local lease, sess, out, clients, in_use, asks = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local me, ttl, token, new_token, last_seq, id, keep_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local max_frame, version, ended = ARGV[8], ARGV[9], ARGV[10]
local owner = redis.call('GET', lease)
local known = redis.call('HGET', sess, 'token')
if owner and owner ~= me then
  if known and known == token then return {'moving', owner, redis.call('PTTL', lease)} end
  if redis.call('EXISTS', in_use) == 1 then return {'in_use', owner} end
  return {'held', owner, redis.call('PTTL', lease)}
end
redis.call('SET', lease, me, 'PX', ttl)
if known and known == token then
  local out_seq = tonumber(redis.call('HGET', sess, 'out_seq'))
  if tonumber(last_seq) <= out_seq then
    local prev = redis.call('HGET', sess, 'node')
    local in_taken = tonumber(redis.call('HGET', sess, 'in_taken'))
    if prev and prev ~= '' and prev ~= me then
      -- Its last holder died holding it: the message after the last one
      -- recorded may have reached that holder's callbacks, and so may every
      -- one up to the last it recorded as handed (past a request still being
      -- answered).  Kept until a holder records them, however many claims
      -- come between.
      local handed = tonumber(redis.call('HGET', sess, 'in_handed') or '0')
      local was = tonumber(redis.call('HGET', sess, 'suspect_to') or '0')
      redis.call('HSET', sess, 'suspect', in_taken + 1, 'suspect_to', math.max(in_taken + 1, handed, was))
    end
    local suspect = tonumber(redis.call('HGET', sess, 'suspect') or '0')
    local suspect_to = tonumber(redis.call('HGET', sess, 'suspect_to') or suspect)
    redis.call('HSET', sess, 'node', me, 'max_frame', max_frame, 'version', version)
    redis.call('HSET', clients, id, me)
    redis.call('PEXPIRE', sess, keep_ms)
    redis.call('PEXPIRE', out, keep_ms)
    local entries = redis.call('XRANGE', out, '-', '+')
    local bodies = {}
    local first = out_seq + 1
    for i, entry in ipairs(entries) do
      if i == 1 then first = tonumber(string.match(entry[1], '^(%d+)')) end
      bodies[i] = entry[2][2]
    end
    return {'resume', prev, out_seq, in_taken, first, bodies, suspect, suspect_to}
  end
end
local why = 'new'
if known then
  local reason = 'the client started a new session'
  if known == token then
    why, reason = 'stale', 'the cluster lost messages of the session'
  else
    why = 'replaced'
  end
  redis.call('PUBLISH', ended, 'e' .. #id .. ':' .. id .. '0:' .. known .. ' ' .. reason)
elseif token ~= '' then
  why = 'unknown'
end
redis.call('DEL', sess, out, asks)
redis.call('HSET', sess, 'token', new_token, 'out_seq', 0, 'in_taken', 0, 'node', me, 'max_frame', max_frame,
  'version', version)
redis.call('PEXPIRE', sess, keep_ms)
redis.call('HSET', clients, id, me)
return {why, new_token}
"""

_APPEND = """
local sess, out, clients, asks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local body, max_items, me, id, channel = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local size, min_version, request_id = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local max_bytes = tonumber(ARGV[9])
-- One read of the session's fields (every session has a token).
local found = redis.call('HMGET', sess, 'token', 'max_frame', 'version', 'out_bytes')
if not found[1] then return {'unknown'} end
local limit = tonumber(found[2] or '0')
if limit > 0 and size > limit then return {'too_large', limit} end
if min_version > 0 then
  -- A request: only to a client whose protocol has them (a session a node
  -- before this field wrote is taken to have them).
  local version = tonumber(found[3] or min_version)
  if version < min_version then return {'old', version} end
end
if redis.call('XLEN', out) >= max_items then return {'full', 0} end
local queued = tonumber(found[4] or '0')
if max_bytes > 0 and queued + #body > max_bytes then return {'full', queued} end
local seq = redis.call('HINCRBY', sess, 'out_seq', 1)
redis.call('XADD', out, seq .. '-0', 'b', body)
redis.call('HSET', sess, 'z' .. seq, #body, 'out_bytes', queued + #body)
local keep = redis.call('PTTL', sess)
if keep > 0 then redis.call('PEXPIRE', out, keep) end
local owner = redis.call('HGET', clients, id) or ''
if owner ~= '' and owner ~= me then
  redis.call('PUBLISH', channel .. owner, 'd' .. #id .. ':' .. id .. seq .. ':' .. body)
end
local token = ''
if min_version > 0 then
  token = found[1]
  if owner ~= me then
    -- Its reply reaches the holder, which passes it on to the node named here.
    redis.call('HSET', asks, request_id, me)
    if keep > 0 then redis.call('PEXPIRE', asks, keep) end
  end
end
return {'ok', seq, owner, token}
"""

_BROADCAST = """
local clients, prefix = KEYS[1], KEYS[2]
local body, max_items, me, channel, size = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local max_bytes = tonumber(ARGV[6])
local mine, full, remote, skipped = {}, {}, {}, {}
local holders = redis.call('HGETALL', clients)
for i = 1, #holders, 2 do
  local id, owner = holders[i], holders[i + 1]
  local sess, out = prefix .. 'sess:' .. id, prefix .. 'out:' .. id
  local found = redis.call('HMGET', sess, 'token', 'max_frame', 'out_bytes')
  if found[1] then
    local limit = tonumber(found[2] or '0')
    if limit > 0 and size > limit then
      skipped[#skipped + 1] = id
    else
      local queued = tonumber(found[3] or '0')
      if redis.call('XLEN', out) >= max_items or (max_bytes > 0 and queued + #body > max_bytes) then
        full[#full + 1] = id
      else
        local seq = redis.call('HINCRBY', sess, 'out_seq', 1)
        redis.call('XADD', out, seq .. '-0', 'b', body)
        redis.call('HSET', sess, 'z' .. seq, #body, 'out_bytes', queued + #body)
        local keep = redis.call('PTTL', sess)
        if keep > 0 then redis.call('PEXPIRE', out, keep) end
        if owner == me then
          mine[#mine + 1] = id
          mine[#mine + 1] = seq
        elseif owner ~= '' then
          remote[owner] = (remote[owner] or '') .. #id .. ':' .. id .. seq .. ':'
        end
      end
    end
  else
    redis.call('HDEL', clients, id)
  end
end
for owner, list in pairs(remote) do
  redis.call('PUBLISH', channel .. owner, 'b' .. list .. ':' .. body)
end
return {mine, full, skipped}
"""

_TRIM = """
local prefix = KEYS[1]
for i = 1, #ARGV, 2 do
  local id, upto = ARGV[i], tonumber(ARGV[i + 1])
  local sess = prefix .. 'sess:' .. id
  -- The stream holds one entry per number from its first on, so what
  -- XTRIM removed is the numbers up to upto, as many as it says.
  local gone = redis.call('XTRIM', prefix .. 'out:' .. id, 'MINID', (upto + 1) .. '-0')
  local freed, from = 0, upto - gone + 1
  while from <= upto do
    -- In chunks: unpack() takes a few thousand values at most.
    local fields = {}
    for seq = from, math.min(upto, from + 999) do fields[#fields + 1] = 'z' .. seq end
    for _, size in ipairs(redis.call('HMGET', sess, unpack(fields))) do
      if size then freed = freed + tonumber(size) end
    end
    redis.call('HDEL', sess, unpack(fields))
    from = from + 1000
  end
  if freed > 0 then redis.call('HINCRBY', sess, 'out_bytes', -freed) end
end
return 1
"""

_TAKEN = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'in_taken', ARGV[2])
local upto = redis.call('HGET', KEYS[2], 'suspect_to') or redis.call('HGET', KEYS[2], 'suspect')
if upto and tonumber(upto) <= tonumber(ARGV[2]) then redis.call('HDEL', KEYS[2], 'suspect', 'suspect_to') end
return 1
"""

_HANDED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'in_handed', ARGV[2])
return 1
"""

_RENEW = """
local prefix, me, ttl, keep_ms, presence, name = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
redis.call('SET', prefix .. 'node:' .. me, presence, 'PX', ttl)
local named = prefix .. 'named:' .. name
local was = redis.call('GET', named)
redis.call('SET', named, me, 'PX', ttl)
local other, other_at = false, false
if was and was ~= me then other, other_at = was, redis.call('GET', prefix .. 'node:' .. was) end
local lost = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  local lease = prefix .. 'lease:' .. id
  if redis.call('GET', lease) == me then
    redis.call('PEXPIRE', lease, ttl)
    redis.call('PEXPIRE', prefix .. 'sess:' .. id, keep_ms)
    redis.call('PEXPIRE', prefix .. 'out:' .. id, keep_ms)
    redis.call('PEXPIRE', prefix .. 'asks:' .. id, keep_ms)
  else
    lost[#lost + 1] = id
  end
end
return {lost, other, other_at}
"""

_END = """
local lease, sess, out, clients, asks = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, ended, reason = ARGV[2], ARGV[3], ARGV[4]
local owner = redis.call('GET', lease)
if owner and owner ~= ARGV[1] then return 0 end
local token = redis.call('HGET', sess, 'token')
redis.call('DEL', lease, sess, out, asks)
redis.call('HDEL', clients, id)
if token then
  -- Requests other nodes stored in it wait for replies that cannot come.
  redis.call('PUBLISH', ended, 'e' .. #id .. ':' .. id .. '0:' .. token .. ' ' .. reason)
end
return 1
"""

_CLIENTS = """
local clients, prefix = KEYS[1], KEYS[2]
local found = {}
local entries = redis.call('HGETALL', clients)
for i = 1, #entries, 2 do
  local id, owner = entries[i], entries[i + 1]
  if redis.call('EXISTS', prefix .. 'sess:' .. id) == 0 then
    -- Its session expired (nobody resumed it): no client of the cluster now.
    redis.call('HDEL', clients, id)
  else
    if owner ~= '' and redis.call('EXISTS', prefix .. 'lease:' .. id) == 0 then
      -- Its holder died, or lost Redis, and its lease ran out: nobody holds it.
      owner = ''
      redis.call('HSET', clients, id, '')
    end
    found[#found + 1] = id
    found[#found + 1] = owner
  end
end
return found
"""

_PASS_REPLY = """
local node = redis.call('HGET', KEYS[1], ARGV[1])
if not node then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2] .. node, ARGV[3])
return 1
"""

_ASKED = """
local keep = redis.call('PTTL', KEYS[2])
if keep <= 0 then return 0 end
for i = 2, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], keep)
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'node', '')
  redis.call('HSET', KEYS[3], ARGV[2], '')
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a node's renewal found."""

    #: The held clients whose lease the node no longer holds.
    lost: list[str]
    #: The holder that renewed last under this node's id, if another one:
    #: the node's run before a restart, or another node given the same id.
    named_before: str | None
    #: Where that holder said it listens, while its presence lasts.
    named_before_at: str | None


@dataclass(frozen=True, slots=True)
class Claim:
    """What Redis said to a node that asked for a client id.

    ``outcome``: ``resume`` (the session goes on here: ``out_seq``,
    ``in_taken``, and the unacknowledged messages from ``first``), ``new``
    (no session), ``replaced`` (the HELLO named no session or another one:
    a new one replaces it), ``stale`` or ``unknown`` (the HELLO named a
    session Redis lost or that fell behind the client: a new one, and the
    client is told its session was lost), ``moving`` (another node holds it
    and the HELLO proved it is the same client: ask that node to let go,
    then retry), ``held`` (another node holds it and the HELLO named no
    session of it: ask that node whether its client is still there),
    ``in_use`` (that node answered that a live client holds the id).
    """

    outcome: str
    token: str = ""
    node: str = ""
    out_seq: int = 0
    in_taken: int = 0
    first: int = 1
    bodies: tuple[bytes, ...] = ()
    #: For ``resume``: the first and last numbers of the messages from the
    #: client that a holder which died may have handed to its callbacks
    #: (0: none; one message, unless requests were answered side by side).
    suspect: int = 0
    suspect_to: int = 0
    #: For ``moving`` and ``held``: seconds until the holder's lease runs
    #: out, when the id is free at the latest (the holder may let go sooner).
    free_in: float = 0.0


@dataclass(frozen=True, slots=True)
class Appended:
    """A message numbered ``seq`` in a client's stream; ``node`` holds the
    client (``''``: none now); for a request, ``session`` is the token of
    the session it was stored in."""

    seq: int
    node: str
    session: str = ""


class ClusterStore:
    """The cluster's state in one Redis database; see the module docstring.

    ``prefix`` namespaces every key, so several clusters can share a Redis.
    """

    def __init__(self, url: str, prefix: str = "missioncommander:", timeout: float = 1.0) -> None:
        redis = import_redis()
        #: For messages: without the password the URL may carry.
        self.url = cfg.redacted_url(url)
        self.prefix = prefix
        self.channel = prefix + "node:"
        #: Where the news that a session ended for good goes: every node
        #: listens, and fails its requests stored in that session.
        self.ended = prefix + "ended"
        # Any: redis-py types each reply as str or bytes at once; without
        # decode_responses every reply here is bytes.
        self.redis: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        #: Redis answered, with a refusal (NOPERM) or without the field asked.
        self._response_errors: tuple[type[BaseException], ...] = (redis.ResponseError, KeyError)
        self._claim = self.redis.register_script(_CLAIM)
        self._append = self.redis.register_script(_APPEND)
        self._broadcast = self.redis.register_script(_BROADCAST)
        self._taken = self.redis.register_script(_TAKEN)
        self._trim = self.redis.register_script(_TRIM)
        self._handed = self.redis.register_script(_HANDED)
        self._renew = self.redis.register_script(_RENEW)
        self._end = self.redis.register_script(_END)
        self._pass_reply = self.redis.register_script(_PASS_REPLY)
        self._asked = self.redis.register_script(_ASKED)
        self._release = self.redis.register_script(_RELEASE)
        self._clients = self.redis.register_script(_CLIENTS)

    def _keys(self, client_id: str) -> list[str]:
        p = self.prefix
        return [f"{p}lease:{client_id}", f"{p}sess:{client_id}", f"{p}out:{client_id}", f"{p}clients"]

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except self._errors as exc:
            raise ClusterUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc

    def run_id(self) -> str | None:
        """The Redis server's run id (``INFO server``), new at each start of
        it; None where the node may not ask (an ACL without ``info``): Redis
        answered either way.  ``ClusterUnavailable`` when it does not."""
        try:
            return str(self.redis.info("server")["run_id"])
        except self._response_errors:
            return None
        except self._errors as exc:
            raise ClusterUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc

    def claim(
        self,
        client_id: str,
        node: str,
        token: str | None,
        new_token: str,
        last_seq: int,
        ttl: float,
        keep: float,
        max_frame_size: int,
        version: int,
    ) -> Claim:
        """Take client ``client_id`` for ``node`` (see ``Claim``); the
        client's ``max_frame_size`` bounds what any node sends it, and its
        protocol ``version`` whether any node may send it a request."""
        reply = self._call(
            self._claim,
            [*self._keys(client_id), f"{self.prefix}inuse:{client_id}", f"{self.prefix}asks:{client_id}"],
            [
                node,
                int(ttl * 1000),
                token or "",
                new_token,
                last_seq,
                client_id,
                int(keep * 1000),
                max_frame_size,
                version,
                self.ended,
            ],
        )
        outcome = reply[0].decode()
        if outcome == "in_use":
            return Claim(outcome, node=reply[1].decode())
        if outcome in ("moving", "held"):
            return Claim(outcome, node=reply[1].decode(), free_in=max(0, int(reply[2])) / 1000)
        if outcome == "resume":
            return Claim(
                "resume",
                token=token or "",
                node=(reply[1] or b"").decode(),
                out_seq=int(reply[2]),
                in_taken=int(reply[3]),
                first=int(reply[4]),
                bodies=tuple(reply[5]),
                suspect=int(reply[6]),
                suspect_to=int(reply[7]),
            )
        return Claim(outcome, token=reply[1].decode())

    def append(
        self,
        client_id: str,
        body: bytes,
        max_items: int,
        node: str,
        min_version: int = 0,
        request_id: int = 0,
        max_bytes: int = 0,
    ) -> Appended | tuple[str, int]:
        """Number ``body`` in ``client_id``'s stream and tell its holder if
        that is another node; ``('unknown', 0)``, ``('full', the bytes
        queued: 0 when ``max_items`` are)``,
        ``('too_large', the client's max_frame_size)`` or, for a request
        (``min_version``, the protocol version that has them), ``('old',
        the client's version)`` when it cannot.  A request to a client that
        another node holds (or none) is recorded as ``node``'s, for the
        holder to pass its reply on (``pass_reply``).  ``max_bytes`` bounds
        the bytes of the messages in the stream (0: no bound)."""
        keys = [*self._keys(client_id)[1:], f"{self.prefix}asks:{client_id}"]
        size = len(body) + MESSAGE_OVERHEAD
        reply = self._call(
            self._append,
            keys,
            [body, max_items, node, client_id, self.channel, size, min_version, request_id, max_bytes],
        )
        if reply[0] != b"ok":
            return reply[0].decode(), int(reply[1]) if len(reply) > 1 else 0
        return Appended(int(reply[1]), reply[2].decode(), reply[3].decode())

    def broadcast(
        self, body: bytes, max_items: int, node: str, max_bytes: int = 0
    ) -> tuple[list[tuple[str, int]], list[str], list[str]]:
        """Number ``body`` in every client's stream; returns this node's
        clients with their numbers, the clients whose stream was full
        (``max_items`` messages, or ``max_bytes`` bytes: 0 for no bound), and
        those skipped because the message is over their frame limit."""
        size = len(body) + MESSAGE_OVERHEAD
        mine, full, skipped = self._call(
            self._broadcast,
            [self.prefix + "clients", self.prefix],
            [body, max_items, node, self.channel, size, max_bytes],
        )
        pairs = [(mine[i].decode(), int(mine[i + 1])) for i in range(0, len(mine), 2)]
        return pairs, [c.decode() for c in full], [c.decode() for c in skipped]

    def taken(self, client_id: str, node: str, seq: int) -> bool:
        """Record that message ``seq`` from the client was taken; False if
        ``node`` no longer holds the client (nothing written)."""
        keys = self._keys(client_id)[:2]
        return bool(self._call(self._taken, keys, [node, seq]))

    def handed(self, client_id: str, node: str, seq: int) -> bool:
        """Record that messages up to ``seq`` from the client are being handed
        to callbacks while one before them is not yet taken; False if
        ``node`` no longer holds the client (nothing written)."""
        keys = self._keys(client_id)[:2]
        return bool(self._call(self._handed, keys, [node, seq]))

    def trim(self, acked: dict[str, int]) -> None:
        """Drop what clients acknowledged (``{client_id: seq}``), and their
        sizes from the streams' byte counts: one script per ``BATCH`` of
        clients (Redis serves no one else while a script runs), pipelined."""
        pairs = list(acked.items())
        batches = [[x for pair in pairs[i : i + BATCH] for x in pair] for i in range(0, len(pairs), BATCH)]
        self._batched(lambda pipe, args: self._trim(keys=[self.prefix], args=args, client=pipe), batches)

    def renew(self, node: str, name: str, client_ids: list[str], ttl: float, keep: float, presence: str) -> Renewal:
        """Renew ``node``'s presence and its leases, and the mark of its
        ``name`` (its node id): which holder renewed last under it."""
        args = [node, int(ttl * 1000), int(keep * 1000), presence, name, *client_ids]
        lost, was, was_at = self._call(self._renew, [self.prefix], args)
        return Renewal(
            [c.decode() for c in lost],
            was.decode() if was else None,
            was_at.decode() if was_at else None,
        )

    def end(self, client_id: str, node: str, reason: str) -> bool:
        """End ``client_id``'s session (unless another node holds it now),
        and tell every node why (``e``: their requests stored in it fail)."""
        keys = [*self._keys(client_id), f"{self.prefix}asks:{client_id}"]
        return bool(self._call(self._end, keys, [node, client_id, self.ended, reason]))

    def release_many(self, client_ids: list[str], node: str) -> list[bool]:
        """Let go of each client without ending its session, for another
        node to take it (pipelined); whether each lease was ``node``'s to
        hand back."""
        p = self.prefix
        return [
            bool(released)
            for released in self._batched(
                lambda pipe, client_id: self._release(
                    keys=[f"{p}lease:{client_id}", f"{p}sess:{client_id}", f"{p}clients"],
                    args=[node, client_id],
                    client=pipe,
                ),
                client_ids,
            )
        ]

    def read(self, client_id: str, after: int) -> list[tuple[int, bytes]]:
        """The client's messages numbered above ``after``, in order."""
        (entries,) = self.read_many([(client_id, after)])
        return entries

    def read_many(self, wanted: list[tuple[str, int]]) -> list[list[tuple[int, bytes]]]:
        """``read`` for each (client id, after) pair, a round trip per
        ``BATCH`` of them: a node that rejoins reads every client it holds."""
        return [
            [(int(entry_id.split(b"-")[0]), fields[b"b"]) for entry_id, fields in entries]
            for entries in self._batched(
                lambda pipe, pair: pipe.xrange(f"{self.prefix}out:{pair[0]}", min=f"({pair[1]}-0", max="+"), wanted
            )
        ]

    def numbers_many(self, client_ids: list[str]) -> list[tuple[int, int] | None]:
        """Each session's ``out_seq`` and ``in_taken`` (None: no session),
        a round trip per ``BATCH`` of them."""
        return [
            None if out_seq is None or in_taken is None else (int(out_seq), int(in_taken))
            for out_seq, in_taken in self._batched(
                lambda pipe, client_id: pipe.hmget(f"{self.prefix}sess:{client_id}", ["out_seq", "in_taken"]),
                client_ids,
            )
        ]

    def _batched(self, command: Callable[[Any, _T], object], items: list[_T]) -> list[Any]:
        """``command(pipeline, item)`` for each item, pipelined ``BATCH`` at a time; the replies in order."""
        replies: list[Any] = []
        try:
            for start in range(0, len(items), BATCH):
                with self.redis.pipeline(transaction=False) as pipe:
                    for item in items[start : start + BATCH]:
                        command(pipe, item)
                    replies.extend(pipe.execute())
        except self._errors as exc:
            raise ClusterUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc
        return replies

    def clients(self) -> dict[str, str]:
        """Every client id in the cluster and the node that holds it ('' while
        none does); an entry whose session expired, or whose holder's lease
        ran out, is mended on the way (nothing else would: the node that
        wrote it is gone)."""
        flat = self._call(self._clients, [f"{self.prefix}clients", self.prefix], [])
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def mark_in_use(self, client_id: str, seconds: float) -> None:
        """Tell newcomers, for ``seconds``, that a live client holds ``client_id``."""
        try:
            self.redis.set(f"{self.prefix}inuse:{client_id}", b"1", px=int(seconds * 1000))
        except self._errors as exc:
            raise ClusterUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc

    def publish(self, node: str, notice: bytes) -> None:
        try:
            self.redis.publish(self.channel + node, notice)
        except self._errors as exc:
            raise ClusterUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc

    def pass_reply(self, client_id: str, request_id: int, body: bytes) -> bool:
        """Pass on a reply from ``client_id`` to request ``request_id``,
        which another node sent (its id is not this node's), to the node
        recorded as its asker; False when none is (a reply to a request
        nobody sent, or that timed out)."""
        keys = [f"{self.prefix}asks:{client_id}"]
        return bool(
            self._call(self._pass_reply, keys, [request_id, self.channel, notice("r", client_id, request_id, body)])
        )

    def asked(self, client_id: str, request_ids: list[int], node: str) -> None:
        """Record ``node`` as the asker of ``request_ids`` to ``client_id``
        (it lets the client go before their replies came)."""
        keys = [f"{self.prefix}asks:{client_id}", f"{self.prefix}sess:{client_id}"]
        self._call(self._asked, keys, [node, *request_ids])

    def forget_ask(self, client_id: str, request_id: int) -> None:
        """The asker of ``request_id`` waits no more (it timed out)."""
        try:
            self.redis.hdel(f"{self.prefix}asks:{client_id}", request_id)
        except self._errors as exc:
            raise ClusterUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc

    def close(self) -> None:
        self.redis.close()
        self.redis.connection_pool.disconnect()


def parse_notice(data: bytes) -> tuple[str, Iterator[tuple[str, int]], bytes]:
    """Split a notice into its kind, its (client id, sequence number) pairs
    and its body.  Kinds: ``d`` (one message: one pair), ``b`` (a broadcast:
    a pair per client of the node), ``t`` (another node asks for a client it
    is taking over: one pair, seq 0, body the token), ``k`` (disconnect a
    client: one pair, body the reason), ``r`` (a client's reply to a
    request another node sent: one pair, its number the request's id, body
    the reply's, as the client sent it), ``e`` (a session ended for good:
    one pair, seq 0, body its token, a space and why), ``p`` (a node's
    probe of its own subscription, to itself: one pair, no id, seq 0, no
    body; hearing it is all it is for)."""
    kind = chr(data[0])
    pairs: list[tuple[str, int]] = []
    pos = 1
    count = 1 if kind != "b" else -1
    while count != 0:
        colon = data.index(b":", pos)
        if kind == "b" and colon == pos:  # the empty entry that ends a broadcast's list
            pos = colon + 1
            break
        size = int(data[pos:colon])
        client_id = data[colon + 1 : colon + 1 + size].decode()
        seq_end = data.index(b":", colon + 1 + size)
        pairs.append((client_id, int(data[colon + 1 + size : seq_end])))
        pos = seq_end + 1
        count -= 1
    return kind, iter(pairs), data[pos:]


def notice(kind: str, client_id: str, seq: int, body: bytes) -> bytes:
    """A one-client notice, as ``parse_notice`` reads it (the scripts write ``d`` and ``b`` themselves)."""
    encoded = client_id.encode()
    return kind.encode() + str(len(encoded)).encode() + b":" + encoded + str(seq).encode() + b":" + body
