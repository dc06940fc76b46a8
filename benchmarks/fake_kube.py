"""A small, fast fake Kubernetes API server for the operator benchmark (aiohttp, in-process).

Why not stock kmock: its cost grows with the square of the request count (every request is
matched against the whole history, objects are found by scanning the store), it has no
`labelSelector`, no `resourceVersion` on writes (kopf then runs create handlers twice), its
watches replay everything from an old `resourceVersion` and send no BOOKMARK events (kopf then
reconnects after 70 s idle). At a thousand objects that measures kmock, not the operator.

What it models of the real API server (kubernetes/staging/src/k8s.io/apiserver, pkg/registry):
- discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`) for the kinds given;
- objects in dicts keyed by resource, then (namespace, name), with an index of label pairs, so a
  GET is O(1) and a `k=v` `labelSelector` LIST touches only the matching objects;
- a global `resourceVersion` stamped on every write, `uid`, `creationTimestamp`, `generation`
  (bumped when the spec changes, as for custom resources);
- POST (409 AlreadyExists), JSON merge PATCH (RFC 7386) of the object or its `status`
  subresource (the main resource's patch leaves `.status` alone when a status subresource
  exists), DELETE;
- watches (`watch=true`) with `labelSelector`, per-namespace or cluster-wide; events after the
  given `resourceVersion` from a bounded history (never the whole history), BOOKMARK events while
  idle, `timeoutSeconds`;
- an optional throttle: at most N requests a second (token bucket), queued as API Priority and
  Fairness queues them, never refused; watch streams are not throttled once open.

Requests are counted by client (User-Agent) and kind of call (read, write, watch).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    api_version: str  # "v1" or "group/version"
    kind: str
    plural: str
    status_subresource: bool = False
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_selector(raw: str | None) -> list[tuple[str, str, str | None]]:
    """`a=b,c!=d,e,!f` as (op, key, value) terms; op in =, !=, exists, !exists."""
    terms: list[tuple[str, str, str | None]] = []
    for part in (raw or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part:
            key, value = part.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "=" in part:
            key, value = part.split("=", 1)
            terms.append(("=", key.strip(), value.strip().lstrip("=")))
        elif part.startswith("!"):
            terms.append(("!exists", part[1:].strip(), None))
        else:
            terms.append(("exists", part, None))
    return terms


def matches(labels: dict[str, str], terms: list[tuple[str, str, str | None]]) -> bool:
    for op, key, value in terms:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True


def _labels(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


@dataclass
class Watcher:
    namespace: str | None
    terms: list[tuple[str, str, str | None]]
    queue: asyncio.Queue[Obj] = field(default_factory=asyncio.Queue)


@dataclass
class Counts:
    reads: int = 0
    writes: int = 0
    watches: int = 0


class FakeKube:
    """The store, the watches and the HTTP app. `on_write(kind, obj)` is called after each write."""

    def __init__(
        self,
        kinds: list[Kind],
        *,
        rate: float | None = None,
        bookmark_seconds: float = 10.0,
        history: int = 100_000,
        on_write: Callable[[Kind, str, Obj], None] | None = None,
    ) -> None:
        self.kinds = {(k.api_version, k.plural): k for k in kinds}
        self.store: dict[Kind, dict[tuple[str | None, str], Obj]] = {k: {} for k in kinds}
        # kind -> (namespace, label key, value) -> names: a `k=v` LIST reads only its matches.
        self.label_index: dict[Kind, dict[tuple[str | None, str, str], set[str]]] = {k: {} for k in kinds}
        self.watchers: dict[Kind, list[Watcher]] = {k: [] for k in kinds}
        self.history: collections.deque[tuple[int, Kind, Obj]] = collections.deque(maxlen=history)
        self.rv = 1
        self.rate = rate
        self._next_slot = 0.0
        self.bookmark_seconds = bookmark_seconds
        self.on_write = on_write
        self.counts: dict[str, Counts] = collections.defaultdict(Counts)
        self.app = web.Application(client_max_size=2**24)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    # --- store --------------------------------------------------------------------------------

    def _index(self, kind: Kind, ns: str | None, name: str, obj: Obj | None, add: bool) -> None:
        if obj is None:
            return
        index = self.label_index[kind]
        for key, value in _labels(obj).items():
            names = index.setdefault((ns, key, value), set())
            if add:
                names.add(name)
            else:
                names.discard(name)

    def _emit(self, kind: Kind, event_type: str, obj: Obj) -> None:
        event = {"type": event_type, "object": obj}
        self.history.append((self.rv, kind, event))
        meta = obj.get("metadata") or {}
        ns, labels = meta.get("namespace"), meta.get("labels") or {}
        for watcher in self.watchers[kind]:
            if (watcher.namespace is None or watcher.namespace == ns) and matches(labels, watcher.terms):
                watcher.queue.put_nowait(event)

    def _stamp(self, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def create(self, kind: Kind, ns: str | None, obj: Obj) -> Obj:
        """Create (as POST does); raises KeyError when it exists."""
        obj = json.loads(json.dumps(obj))
        meta = obj.setdefault("metadata", {})
        name = str(meta["name"])
        if ns is not None:
            meta["namespace"] = ns
        if (ns, name) in self.store[kind]:
            raise KeyError(name)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta["generation"] = 1
        self._stamp(obj)
        self.store[kind][(ns, name)] = obj
        self._index(kind, ns, name, obj, add=True)
        self._emit(kind, "ADDED", obj)
        if self.on_write:
            self.on_write(kind, "create", obj)
        return obj

    def patch(self, kind: Kind, ns: str | None, name: str, patch: Obj, status: bool) -> Obj | None:
        old = self.store[kind].get((ns, name))
        if old is None:
            return None
        if status:
            new = {**old, "status": merge_patch(old.get("status"), patch.get("status"))}
        else:
            if kind.status_subresource:
                patch = {k: v for k, v in patch.items() if k != "status"}
            new = merge_patch(old, patch)
            new["metadata"] = {**new.get("metadata", {})}
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
        new["metadata"]["name"], new["metadata"]["uid"] = name, old["metadata"]["uid"]
        self._index(kind, ns, name, old, add=False)
        self._stamp(new)
        self.store[kind][(ns, name)] = new
        self._index(kind, ns, name, new, add=True)
        self._emit(kind, "MODIFIED", new)
        if self.on_write:
            self.on_write(kind, "status" if status else "patch", new)
        return new

    def delete(self, kind: Kind, ns: str | None, name: str) -> Obj | None:
        old = self.store[kind].pop((ns, name), None)
        if old is None:
            return None
        self._index(kind, ns, name, old, add=False)
        gone = {**old, "metadata": dict(old["metadata"])}
        self._stamp(gone)
        self._emit(kind, "DELETED", gone)
        if self.on_write:
            self.on_write(kind, "delete", gone)
        return gone

    def list(self, kind: Kind, ns: str | None, selector: str | None) -> list[Obj]:
        terms = parse_selector(selector)
        objects = self.store[kind]
        equal = next(((k, v) for op, k, v in terms if op == "=" and v is not None), None)
        if equal is not None and ns is not None:
            names = self.label_index[kind].get((ns, equal[0], equal[1]), set())
            candidates = [objects[(ns, n)] for n in names if (ns, n) in objects]
        else:
            candidates = [o for (n, _), o in objects.items() if ns is None or n == ns]
        return [o for o in candidates if matches(_labels(o), terms)]

    # --- HTTP ---------------------------------------------------------------------------------

    async def _throttle(self) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)

    def _discovery(self, parts: list[str]) -> Obj | None:
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"]}
        if parts == ["apis"]:
            groups: dict[str, list[str]] = {}
            for kind in self.kinds.values():
                if kind.group:
                    groups.setdefault(kind.group, [])
                    if kind.version not in groups[kind.group]:
                        groups[kind.group].append(kind.version)
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                        "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                    }
                    for g, vs in groups.items()
                ],
            }
        gv = (
            "v1"
            if parts == ["api", "v1"]
            else "/".join(parts[1:])
            if parts[0] == "apis" and len(parts) == 3
            else None
        )
        if gv is None:
            return None
        resources: list[Obj] = []
        for kind in self.kinds.values():
            if kind.api_version != gv:
                continue
            verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
            resources.append(
                {
                    "name": kind.plural,
                    "singularName": kind.kind.lower(),
                    "namespaced": kind.namespaced,
                    "kind": kind.kind,
                    "verbs": verbs,
                }
            )
            if kind.status_subresource:
                resources.append(
                    {
                        "name": f"{kind.plural}/status",
                        "singularName": "",
                        "namespaced": True,
                        "kind": kind.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if not resources:
            return None
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    def _route(self, parts: list[str]) -> tuple[Kind, str | None, str | None, str | None] | None:
        """(kind, namespace, name, subresource) of a resource path."""
        if parts[:2] == ["api", "v1"]:
            gv, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            return None
        kind = self.kinds.get((gv, rest[0]))
        if kind is None:
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return kind, ns, name, sub

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        return web.json_response(body, status=code)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        counts = self.counts[request.headers.get("User-Agent", "?").split("/")[0]]
        watch = request.query.get("watch") in ("true", "1")
        if watch:
            counts.watches += 1
        elif request.method in ("GET", "HEAD"):
            counts.reads += 1
        else:
            counts.writes += 1
        await self._throttle()
        parts = [p for p in request.path.split("/") if p]
        route = self._route(parts)
        if route is None:
            found = self._discovery(parts)
            if found is None:
                return self._status(404, "NotFound", f"{request.path} not found")
            return web.json_response(found)
        kind, ns, name, sub = route
        if watch:
            return await self._watch(request, kind, ns)
        if request.method == "GET" and name is None:
            items = self.list(kind, ns, request.query.get("labelSelector"))
            return web.json_response(
                {
                    "kind": f"{kind.kind}List",
                    "apiVersion": kind.api_version,
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
            )
        if request.method == "GET":
            obj = self.store[kind].get((ns, str(name)))
            return (
                web.json_response(obj)
                if obj
                else self._status(404, "NotFound", f"{kind.plural} {name!r} not found")
            )
        if request.method == "POST":
            try:
                obj = self.create(kind, ns, await request.json())
            except KeyError as exc:
                return self._status(409, "AlreadyExists", f"{kind.plural} {exc.args[0]!r} already exists")
            return web.json_response(obj, status=201)
        if request.method == "PATCH" and name is not None:
            patched = self.patch(kind, ns, name, await request.json(), status=sub == "status")
            return (
                web.json_response(patched)
                if patched
                else self._status(404, "NotFound", f"{kind.plural} {name!r} not found")
            )
        if request.method == "DELETE" and name is not None:
            gone = self.delete(kind, ns, name)
            return (
                web.json_response(gone)
                if gone
                else self._status(404, "NotFound", f"{kind.plural} {name!r} not found")
            )
        return self._status(405, "MethodNotAllowed", f"{request.method} {request.path}")

    async def _watch(self, request: web.Request, kind: Kind, ns: str | None) -> web.StreamResponse:
        watcher = Watcher(ns, parse_selector(request.query.get("labelSelector")))
        since = int(request.query.get("resourceVersion") or self.rv)
        # Events after `since` from the bounded history only: never a replay of everything.
        for rv, k, event in list(self.history):
            if k is kind and rv > since:
                meta = event["object"].get("metadata") or {}
                if (ns is None or meta.get("namespace") == ns) and matches(
                    meta.get("labels") or {}, watcher.terms
                ):
                    watcher.queue.put_nowait(event)
        self.watchers[kind].append(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds") or 1800)
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), min(left, self.bookmark_seconds))
                except TimeoutError:
                    event = {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": kind.kind,
                            "apiVersion": kind.api_version,
                            "metadata": {"resourceVersion": str(self.rv)},
                        },
                    }
                chunk = [json.dumps(event)]
                while not watcher.queue.empty() and len(chunk) < 500:
                    chunk.append(json.dumps(watcher.queue.get_nowait()))
                await response.write(("\n".join(chunk) + "\n").encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers[kind].remove(watcher)
        return response
