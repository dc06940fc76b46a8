"""Drift between a child as rendered and as it lives in the cluster (pure).

respublica owns, on each child, exactly what it renders: the labels and annotations it sets, its
owner reference, and the spec. The API server and other controllers add more (uid, status,
defaulted fields, labels of their own); those are never compared, so a child that only carries
such additions is in sync and costs no write. A hand edit of an owned field, or a spec change
(which also moves the spec-hash annotation), is drift.

The answer is a JSON merge patch (RFC 7386, what `application/merge-patch+json` means for every
kind) that puts the owned fields back, or a request to recreate the child when the field that
drifted cannot be changed in place (a Job's pod template).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from respublica.operator.dig import dig
from respublica.operator.render import SPEC_HASH_ANNOTATION

Obj = Mapping[str, Any]

# Kinds whose whole spec respublica writes: a drifted spec is replaced as a whole, so keys that a
# newer render dropped (a nodeSelector entry, an affinity) disappear too.
_SPEC_OWNED = {"RayService", "NetworkPolicy"}
# Kinds whose spec the API server refuses to change after creation (except as handled below).
_SPEC_IMMUTABLE = {"Job"}


@dataclass(frozen=True)
class Drift:
    """What must happen to bring one child back to its rendered form."""

    patch: dict[str, Any] | None = None
    recreate: bool = False
    fields: list[str] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return self.patch is None and not self.recreate


def covers(live: Any, rendered: Any) -> bool:
    """Whether `live` holds everything `rendered` sets (additions by others are ignored).

    Mappings: every rendered key present with a covered value. Lists: same length and each item
    covered, so a defaulted field inside a list item (a container's `imagePullPolicy`) is fine but
    an added or removed item is drift. Scalars: equal.
    """
    if isinstance(rendered, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and covers(live[k], v) for k, v in rendered.items()
        )
    if isinstance(rendered, list):
        return (
            isinstance(live, list)
            and len(live) == len(rendered)
            and all(covers(a, b) for a, b in zip(live, rendered, strict=True))
        )
    if isinstance(rendered, bool) or isinstance(live, bool):
        return live is rendered
    if isinstance(rendered, int | float) and isinstance(live, int | float):
        return float(live) == float(rendered)
    if isinstance(rendered, int | float) and isinstance(live, str):
        return _quantity(live) == Decimal(str(rendered))  # an int-or-string quantity sent as a number
    if isinstance(rendered, str) and isinstance(live, str) and live != rendered:
        # The API server canonicalises resource quantities of built-in kinds ("1.5Gi" comes back
        # as "1536Mi", "0.5" CPU as "500m"): equal amounts are not drift.
        want, have = _quantity(rendered), _quantity(live)
        return want is not None and want == have
    return bool(live == rendered)


_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


def _quantity(text: str) -> Decimal | None:
    """A Kubernetes quantity's amount ("1536Mi" -> 1610612736), or None if it is not one."""
    match = _QUANTITY.match(text)
    if match is None:
        return None
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""]


def replacement(live: Any, rendered: Any) -> Any:
    """A merge patch that turns `live` into exactly `rendered` (extra keys set to null)."""
    if not isinstance(rendered, Mapping) or not isinstance(live, Mapping):
        return rendered
    out: dict[str, Any] = {}
    for key, value in rendered.items():
        if key not in live:
            out[key] = value
        elif not (covers(live[key], value) and covers(value, live[key])):
            out[key] = replacement(live[key], value)
    for key in live:
        if key not in rendered:
            out[key] = None
    return out


def _owner_refs_patch(live: Sequence[Obj], rendered: Sequence[Obj]) -> list[dict[str, Any]] | None:
    """The full ownerReferences list with ours put back, keeping references others added."""
    if all(any(covers(ref, want) for ref in live) for want in rendered):
        return None
    ours = {want.get("uid") for want in rendered}
    kept = [dict(ref) for ref in live if ref.get("uid") not in ours]
    return kept + [dict(want) for want in rendered]


def compare(live: Obj, rendered: Obj) -> Drift:
    """The drift of one child: `live` as read from the API, `rendered` as render() made it."""
    kind = str(rendered.get("kind", ""))
    live_meta: Obj = live.get("metadata") or {}
    want_meta: Obj = rendered.get("metadata") or {}
    patch: dict[str, Any] = {}
    meta_patch: dict[str, Any] = {}
    fields: list[str] = []

    for key in ("labels", "annotations"):
        want = want_meta.get(key) or {}
        have = live_meta.get(key) or {}
        changed = {k: v for k, v in want.items() if have.get(k) != v}
        if changed:
            meta_patch[key] = changed
            fields.extend(f"metadata.{key}.{k}" for k in changed)

    refs = _owner_refs_patch(live_meta.get("ownerReferences") or [], want_meta.get("ownerReferences") or [])
    if refs is not None:
        meta_patch["ownerReferences"] = refs
        fields.append("metadata.ownerReferences")
    if meta_patch:
        patch["metadata"] = meta_patch

    # A new render (the hash moved) may have dropped keys that covering cannot notice.
    rerendered = (live_meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION) != (
        want_meta.get("annotations") or {}
    ).get(SPEC_HASH_ANNOTATION)
    recreate = False
    for section in ("spec", "data"):
        if section not in rendered:
            continue
        want_spec = rendered[section]
        have_spec = live.get(section)
        if kind in _SPEC_OWNED:
            if covers(have_spec, want_spec) and not rerendered:
                continue
            replaced = replacement(have_spec or {}, want_spec)
            if replaced != {}:
                patch[section] = replaced
                fields.append(section)
            continue
        if covers(have_spec, want_spec):
            continue
        fields.append(section)
        if kind in _SPEC_IMMUTABLE:
            recreate = True
        elif kind == "PersistentVolumeClaim":
            # Only the requested size can change in place (and only grow); the rest of a claim is
            # fixed at creation, and recreating it would throw the downloaded weights away.
            size = dig(want_spec, "resources", "requests", "storage")
            if size is not None and dig(have_spec, "resources", "requests", "storage") != size:
                patch["spec"] = {"resources": {"requests": {"storage": size}}}
        else:
            patch[section] = want_spec
    return Drift(patch=patch or None, recreate=recreate, fields=fields)


def stale(live: Sequence[Obj], rendered: Sequence[Obj], owner_uid: str) -> list[Obj]:
    """Children the owner still has but the render no longer makes (an old download Job, a cache
    that was removed). Only objects whose owner reference names `owner_uid` are ever returned."""
    wanted = {(str(o.get("kind")), str((o.get("metadata") or {}).get("name"))) for o in rendered}
    out = []
    for obj in live:
        meta = obj.get("metadata") or {}
        owned = any(ref.get("uid") == owner_uid for ref in meta.get("ownerReferences") or ())
        if (
            owned
            and not meta.get("deletionTimestamp")
            and (str(obj.get("kind")), str(meta.get("name"))) not in wanted
        ):
            out.append(obj)
    return out
