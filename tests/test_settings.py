"""Every setting declared once (`glimp_integrations.settings`): each surface has every setting the
declaration has, and none it has not."""

import inspect
import re
from pathlib import Path

import pytest

from glimp_integrations import GlimpRouter
from glimp_integrations.cli import build_parser
from glimp_integrations.serve.protocol import ROUTING_FIELDS, SAMPLING_FIELDS
from glimp_integrations.settings import (
    ADAPTERS_OWN,
    ENGINE_SETTINGS,
    RUN_SETTING_NAMES,
    SETTING_NAMES,
    SETTINGS,
    adapter_settings,
    cli_settings,
    settings_table,
)

ADAPTER_NAMES = {setting.name for setting in adapter_settings()}


def _adapters():
    from langchain_core.language_models import BaseChatModel
    from llama_index.core.llms.function_calling import FunctionCallingLLM

    from langchain_glimp import ChatGlimpRouter
    from llamaindex_glimp import GlimpRouterLLM

    own = {"small", "large", "max_tokens", "timeout", "max_retries", "stop"}
    return [
        (ChatGlimpRouter, BaseChatModel, own | {"api_key", "streaming"}),
        (GlimpRouterLLM, FunctionCallingLLM, own),
    ]


def test_every_setting_is_described_and_the_adapters_own_are_settings():
    assert all(setting.description for setting in SETTINGS)
    assert ADAPTERS_OWN <= set(RUN_SETTING_NAMES) and len(set(SETTING_NAMES)) == len(SETTING_NAMES)


@pytest.mark.parametrize("index", [0, 1], ids=["langchain", "llamaindex"])
def test_each_adapter_has_every_setting_as_a_field_described_by_the_declaration(index):
    adapter, framework, own = _adapters()[index]
    fields = set(adapter.model_fields)
    assert ADAPTER_NAMES <= fields, f"{adapter.__name__} lacks {sorted(ADAPTER_NAMES - fields)}"
    undeclared = fields - ADAPTER_NAMES - own - set(framework.model_fields)
    assert not undeclared, f"{adapter.__name__} has fields the declaration does not: {sorted(undeclared)}"
    for setting in adapter_settings():
        assert adapter.model_fields[setting.name].description.startswith(setting.description), setting.name


@pytest.mark.parametrize(
    "command, swept",
    [
        ("ask", set()),
        ("serve", set()),
        ("bench", {"policy", "threshold", "random_rate"}),
        ("calibrate", {"policy", "threshold", "random_rate"}),
    ],
)
def test_each_command_has_an_option_per_setting(command, swept):
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    destinations = {action.dest for action in subparsers.choices[command]._actions}
    missing = set(SETTING_NAMES) - swept - destinations
    assert not missing, f"glimp {command} lacks options for {sorted(missing)}"


def test_command_line_values_reach_the_router_as_settings():
    args = build_parser().parse_args(
        [
            "ask",
            "q",
            "--top-p",
            "0.5",
            "--threshold",
            "inf",
            "--stop",
            '["X:"]',
            "--no-span-steps",
            "--mode",
            "plain",
            "--probe-ladder",
            "[20, null]",
        ]
    )
    assert cli_settings(args) == {
        "top_p": 0.5,
        "threshold": float("inf"),
        "stop": ("X:",),
        "span_steps": False,
        "reasoning_mode": "plain",
        "probe_ladder": (20, None),
    }


def test_the_server_takes_every_run_setting_and_only_those():
    assert set(ROUTING_FIELDS) | {"temperature", "top_p", "seed", "stop"} == set(RUN_SETTING_NAMES)
    assert set(SAMPLING_FIELDS) <= set(RUN_SETTING_NAMES)


def test_the_engine_takes_every_setting_with_the_declared_defaults():
    parameters = inspect.signature(GlimpRouter).parameters
    assert {s.name: s.default for s in ENGINE_SETTINGS} == {s.name: parameters[s.name].default for s in ENGINE_SETTINGS}


def test_the_docs_table_is_the_declarations():
    page = (Path(__file__).parent.parent / "docs" / "engine.md").read_text()
    table = re.search(r"<!-- settings table[^>]*-->\n(.*?)\n<!-- end of settings table -->", page, re.DOTALL)
    assert table and table.group(1) == settings_table(), (
        "docs/engine.md's settings table is stale: paste glimp_integrations.settings.settings_table() there"
    )
