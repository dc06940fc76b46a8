"""kopf's per-object bookkeeping, switched off: respublica keeps no state in its objects' annotations.

kopf computes, on every watch event of every watched object, whatever handlers it has: in
`kopf/_core/reactor/processing.py` `_detect_causes`, `diffbase_storage.fetch` and `.build` (a
`copy.deepcopy` of the whole body, then annotation filtering: `kopf/_cogs/configs/diffbase.py`
`DiffBaseStorage.build`) and `progress_storage.clear` on both (another deep copy:
`kopf/_cogs/configs/progress.py` `ProgressStorage.clear`). The result, the "diff", is used only to
detect the causes of change handlers (`detect_changing_cause`) and to reset daemons' idle timers
(`detect_spawning_cause`); respublica registers neither (handlers.py: event handlers only), so
these copies were pure waste: about a tenth of the operator's CPU at a thousand deployments.

The progress storage is otherwise used only by change handlers (`process_changing_cause`,
`subhandling`) and by `kopf/_core/actions/application.py` `apply`, which `touch`es it to remove
its dummy annotation when a patch goes out (no patch goes out: nothing is stored).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """No last-handled state: every essence is empty, so every diff is empty and costs nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()  # fresh: kopf may hold on to it

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        # Empty, not None: `diffs.diff(None, {})` would report an addition.
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class NoProgress(kopf.ProgressStorage):
    """No handler progress: respublica's event handlers are not retried by kopf (work_queue.py is)."""

    def fetch(self, *, key: Any, body: kopf.Body) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence
