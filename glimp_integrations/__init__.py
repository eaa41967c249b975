"""Glimp: a small and a large model write one chain of thought together (GlimpRouter).

The engine imports no LLM framework; `langchain_glimp`, `llamaindex_glimp` and `serve` (`glimp
serve`) adapt its public names.  Its modules, by concern:
- `router` (`GlimpRouter`, the facade) and `routing_loop` (the paper's algorithm for one run);
- `entropy` (H_init and its bounds), `policies` (who writes a step), `messages` (a run's prompt);
- `config` and `settings` (every setting, declared once), `trace` (events and traces);
- `constraints`, `tool_formats` and `tools` (answer grammars, each family's tool calls);
- `backends` (transformers, vLLM in process, OpenAI-compatible servers, scripted), `embedded`
  (the default model), `local_fleet` (vLLM servers on this machine);
- `adapters` (what the framework adapters share), `model_files` (a model folder checked), `_sync`
  (async code from sync callers);
- `errors`, `propagation` (headers of model-server requests), `cli`, `pair_check`, `bench`.
"""

from glimp_integrations.adapters import (
    CALL_OVERRIDES,
    ROUTER_SETTINGS,
    check_adapter_settings,
    check_router_settings,
    router_settings,
)
from glimp_integrations.backends.base import (
    Backend,
    ModelSession,
    SessionSpec,
    StepWriter,
    TokenDistribution,
)
from glimp_integrations.backends.scripted import (
    ScriptedBackend,
    ScriptedModel,
    ScriptedStep,
    peaked_logprobs,
)
from glimp_integrations.config import RouterConfig, SamplingConfig
from glimp_integrations.entropy import (
    EntropyBounds,
    Verdict,
    entropy_bounds,
    entropy_nats,
    verdict,
)
from glimp_integrations.errors import (
    ContextLengthError,
    GlimpConfigError,
    GlimpError,
    GlimpInputError,
    GlimpRunError,
    GlimpTimeoutError,
    MissingDependencyError,
    RunFailure,
    UpstreamError,
)
from glimp_integrations.messages import normalize_messages
from glimp_integrations.policies import RoutingPolicy, SmallStepDraft, make_policy
from glimp_integrations.propagation import set_model_request_headers
from glimp_integrations.router import GlimpRouter
from glimp_integrations.trace import (
    ProbeTrace,
    RouterEvent,
    RunFinished,
    RunTrace,
    StepDiscarded,
    StepFinished,
    StepStarted,
    StepTrace,
    TokenDelta,
)
from glimp_integrations.version import UntestedVersionWarning, __version__

__all__ = [
    "__version__",
    "CALL_OVERRIDES",
    "ROUTER_SETTINGS",
    "Backend",
    "ContextLengthError",
    "EntropyBounds",
    "GlimpConfigError",
    "GlimpError",
    "GlimpInputError",
    "GlimpRouter",
    "GlimpRunError",
    "GlimpTimeoutError",
    "MissingDependencyError",
    "ModelSession",
    "ProbeTrace",
    "RouterConfig",
    "RouterEvent",
    "RoutingPolicy",
    "RunFailure",
    "RunFinished",
    "RunTrace",
    "SamplingConfig",
    "ScriptedBackend",
    "ScriptedModel",
    "ScriptedStep",
    "SessionSpec",
    "SmallStepDraft",
    "StepDiscarded",
    "StepFinished",
    "StepStarted",
    "StepTrace",
    "StepWriter",
    "TokenDelta",
    "UntestedVersionWarning",
    "TokenDistribution",
    "UpstreamError",
    "Verdict",
    "check_adapter_settings",
    "check_router_settings",
    "entropy_bounds",
    "entropy_nats",
    "make_policy",
    "normalize_messages",
    "peaked_logprobs",
    "router_settings",
    "set_model_request_headers",
    "verdict",
]
