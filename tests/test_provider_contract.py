"""Every provider module and what it builds keep the contract of ``bulksend.providers.base``
(mypy checks the modules' types; this checks what they build from each sample campaign, and
that the optional hooks are declared Protocols, not names looked up by hand)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from bulksend import providers
from bulksend.campaign import build_provider
from bulksend.config import load_settings
from bulksend.models import Recipient
from bulksend.providers.base import (
    BatchAdder,
    Batcher,
    ClassifiesSent,
    CountBatcher,
    Provider,
    Screening,
    SecretsFor,
    add_all,
    adder,
)
from bulksend.providers.maxemail import SingleBatcher
from tests.conftest import ROOT

SAMPLES = sorted((ROOT / "samples").glob("*/*.toml"))


@pytest.mark.parametrize("name", providers.KNOWN)
def test_each_module_supplies_the_registry_contract(name: str) -> None:
    module = providers.load(name)
    assert name == module.NAME
    assert module.DEFAULT_BASE_URL.startswith("https://")
    assert isinstance(module.DEFAULT_BATCH_SIZE, int)
    assert module.DEFAULT_BATCH_SIZE >= 1
    assert isinstance(module.OPERATIONS, tuple)
    assert module.OPERATIONS
    assert all(isinstance(v, str) and v for v in module.SECRETS.values())
    assert list(inspect.signature(module.build).parameters) == ["options", "secrets"]
    if isinstance(module, SecretsFor):
        assert module.secrets_for({})


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_what_each_sample_builds_is_a_provider_with_declared_hooks(path: Path) -> None:
    settings = load_settings(path, env={})
    provider = build_provider(settings, {name: "k" for name in settings.secret_sources})
    assert isinstance(provider, Provider)
    assert provider.name == settings.provider
    assert set(provider.groups)
    assert provider.dedup_keys
    assert set(provider.dedup_keys) <= {"id", "uid"}
    batcher = provider.batcher(settings.batch_size)
    assert isinstance(batcher, Batcher)
    for hook, protocol in (
        ("classify_sent", ClassifiesSent),
        ("screen", Screening),
    ):
        # a method of that name is the hook, so it must match the Protocol exactly
        assert hasattr(provider, hook) == isinstance(provider, protocol)
    assert hasattr(batcher, "add_many") == isinstance(batcher, BatchAdder)
    facts = provider.describe()
    assert "k" not in {str(v) for v in facts.values()}  # never a secret


def test_adder_uses_add_many_when_the_batcher_has_it_else_adds_one_by_one() -> None:
    rows = [Recipient(i + 2, f"id-{i}") for i in range(5)]
    counted = CountBatcher(2, "g")
    assert adder(counted) == counted.add_many  # looked up once, for every chunk after
    assert [b.recipients for b in add_all(counted, rows)] == [rows[0:2], rows[2:4]]
    single = SingleBatcher()
    add = adder(single)
    assert [(b.number, list(b.recipients)) for b in add(rows[:2])] == [
        (1, rows[:1]),
        (2, rows[1:2]),
    ]
    assert [b.number for b in add(rows[2:])] == [3, 4, 5]
