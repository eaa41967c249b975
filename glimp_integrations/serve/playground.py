"""The playground `glimp serve` shows at `GET /`: a question, the run settings, and each step as it
streams in, in the colour of the model that wrote it, with its H_init against the threshold; two
settings side by side on the same question and seed.  One HTML file shipped in the package, no build
step, nothing fetched but the server's own API (it works offline)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from importlib import resources

from glimp_integrations.config import POLICY_NAMES
from glimp_integrations.router import GlimpRouter


def playground_page(router: GlimpRouter, served_model: str, client_settings: Sequence[str]) -> str:
    """The page, with the router's run settings as its form's defaults and only those a request
    may change (`client_settings`) open to edit (no model names: the page is open where `/v1` may
    need a key, so it reads them from `/v1/models` with the user's key)."""
    config = router.config

    def finite(value: float | None) -> float | None:
        return value if value is None or math.isfinite(value) else None

    defaults = {
        "served_model": served_model,
        "policies": list(POLICY_NAMES),
        "client_settings": list(client_settings),
        "threshold": finite(config.threshold),
        "policy": config.policy,
        "reasoning_mode": config.reasoning_mode,
        "reasoning_budget": config.reasoning_budget,
        "answer_budget": config.answer_budget,
        "seed": config.sampling.seed,
        "temperature": config.sampling.temperature,
    }
    page = (resources.files("glimp_integrations.serve") / "playground.html").read_text(encoding="utf-8")
    as_script = json.dumps(defaults).replace("<", "\\u003c")  # cannot close the <script> element
    return page.replace("/*GLIMP_DEFAULTS*/null", as_script)
