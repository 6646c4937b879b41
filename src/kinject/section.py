"""The base of every configuration section: a frozen pydantic model that refuses unknown keys.

It lives apart from :mod:`kinject.config` so that a section can be declared beside the code
it configures (``kinject.probes.facts.FactsConfig``) without importing the whole config.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # No inf or nan: .inf MB, a nan learning rate would pass the range checks
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
