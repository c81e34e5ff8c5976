"""Config interpolations the configs use, registered before Hydra composes anything.

``${run_id:}`` names a run folder: runs started in the same second (sweep trials on several
machines, two operators, a retry) must not share a folder, where checkpoints and bundles would
overwrite each other and their logs interleave. Cached, so one process keeps one id.
"""

from __future__ import annotations

import uuid

from omegaconf import OmegaConf

if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", lambda: uuid.uuid4().hex[:8], use_cache=True)
