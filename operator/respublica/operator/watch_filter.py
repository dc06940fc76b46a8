"""kopf's watches of the child kinds, filtered by the API server to respublica's own objects.

A handler's `labels=` filter is applied by kopf after it has received every event of the kind,
cluster-wide (`kopf/_core/intents/filters` matches bodies client-side); only
`settings.watching.label_selectors` becomes the `labelSelector` of the LIST and WATCH requests
(`kopf/_cogs/clients/watching.py` `watch_objs`, `fetching.py` `list_objs`). Without it the operator
would stream every Job, PVC, NetworkPolicy and RayService of the cluster.
"""

from __future__ import annotations

import kopf

from respublica.operator.render import CHILD_KINDS, MANAGED_BY, MANAGED_BY_LABEL

CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"


def filter_child_watches(settings: kopf.OperatorSettings) -> None:
    """Ask the API server for respublica's children only, on every child kind's list and watch."""
    for child in CHILD_KINDS:
        settings.watching.label_selectors[child.group, child.version, child.plural] = CHILD_SELECTOR
