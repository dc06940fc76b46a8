"""The module `kopf run` loads: `kopf run --standalone -A -m respublica.operator.entry`.

Importing it puts respublica's handlers into kopf's default registry. Settings come from the
RESPUBLICA_* environment variables (see `respublica.operator.settings`). kopf's own `-n`/`-A` flags
choose where kopf watches ModelDeployments; the children's watches are the operator's own
(child_watch.py) and follow RESPUBLICA_NAMESPACES: with `-n`, give it the same names.
`respublica operator` runs the same handlers without this module.
"""

from __future__ import annotations

import kopf

from respublica.operator.handlers import register

register(kopf.get_default_registry())
