"""Operators configure idstream through IDSTREAM_* variables only."""

from __future__ import annotations

import pytest

from identity import ConfigurationError, Identifier, Rejection
from streams.settings import Settings


def test_defaults_give_the_documented_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("IDSTREAM_")]:
        monkeypatch.delenv(name)
    policy = Settings().policy()
    assert policy.limits["crm_contact_id"] == 1
    assert policy.limits["phone"] == 5
    assert policy.anchor_kinds == frozenset({"crm_contact_id"})


def test_environment_configures_normalization_and_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDSTREAM_DEFAULT_REGION", "by")
    monkeypatch.setenv("IDSTREAM_EXTRA_KINDS", '["loyalty_card"]')
    monkeypatch.setenv("IDSTREAM_KIND_LIMITS", '{"phone": 2}')
    monkeypatch.setenv("IDSTREAM_JUNK_VALUES", '{"phone": ["+375291234567"]}')
    monkeypatch.setenv("IDSTREAM_JUNK_EMAIL_DOMAINS", '["Spam.Example.org"]')
    graph = Settings().graph()
    assert graph.policy.limits["phone"] == 2
    assert graph.policy.limits["email"] == 5  # untouched defaults stay
    normalizer = graph.normalizer
    assert normalizer.normalize("loyalty_card", "A-1") == Identifier("loyalty_card", "A-1")
    assert normalizer.normalize("phone", "029 765 43 21") == Identifier("phone", "+375297654321")
    blocked = normalizer.normalize("phone", "029 123 45 67")
    assert isinstance(blocked, Rejection)
    assert blocked.reason == "blocklisted"
    junk_domain = normalizer.normalize("email", "ivan@spam.example.org")
    assert isinstance(junk_domain, Rejection)
    assert junk_domain.reason == "placeholder_domain"


def test_bad_settings_stop_the_process_with_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDSTREAM_KIND_LIMITS", '{"phone": 0}')
    with pytest.raises(ConfigurationError, match="phone"):
        Settings().policy()
    monkeypatch.setenv("IDSTREAM_DEFAULT_REGION", "Russia")
    with pytest.raises(ConfigurationError, match="default_region"):
        Settings().normalizer_config()
