"""Operators configure idstream through IDSTREAM_* variables only."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from identity import ConfigurationError, Identifier, Rejection
from identity.normalize import DEFAULT_CRM_SYSTEMS, DEFAULT_MESSENGER_PLATFORMS
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


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("IDSTREAM_")]:
        monkeypatch.delenv(name)


def test_crm_systems_and_messenger_platforms_default_to_the_built_in_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    settings = Settings()
    assert settings.crm_system_names() == DEFAULT_CRM_SYSTEMS
    assert settings.messenger_platform_names() == DEFAULT_MESSENGER_PLATFORMS
    assert settings.policy().crm_systems == settings.normalizer_config().crm_systems == DEFAULT_CRM_SYSTEMS
    assert settings.normalizer_config().messenger_platforms == DEFAULT_MESSENGER_PLATFORMS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("amo", ["amo"]),
        (" Amo , SBIS,, ", ["amo", "sbis"]),
        ('["amo", "Sbis"]', ["amo", "sbis"]),
        ("", []),
        ("amocrm,amo", ["amo", "amocrm"]),
    ],
)
def test_crm_systems_are_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.setenv("IDSTREAM_CRM_SYSTEMS", value)
    monkeypatch.setenv("IDSTREAM_MESSENGER_PLATFORMS", value)
    settings = Settings()
    assert settings.crm_systems == expected
    assert settings.messenger_platforms == expected
    assert settings.crm_system_names() == DEFAULT_CRM_SYSTEMS | set(expected)


def test_extra_systems_and_platforms_reach_the_normalizer_and_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.setenv("IDSTREAM_CRM_SYSTEMS", "amo,sbis")
    monkeypatch.setenv("IDSTREAM_MESSENGER_PLATFORMS", "icq")
    monkeypatch.setenv("IDSTREAM_KIND_LIMITS", '{"crm_contact_id:sbis": 2}')
    graph = Settings().graph()
    normalizer, policy = graph.normalizer, graph.policy
    assert normalizer.normalize("crm_contact_id", "SBIS: 42") == Identifier("crm_contact_id", "sbis:42")
    amo = normalizer.normalize("crm_contact_id", "amo:501")
    assert amo == Identifier("crm_contact_id", "amo:501")  # the same value as before: only its class is new
    assert policy.limit_key(amo) == "crm_contact_id:amo"
    assert policy.limit("crm_contact_id:amo") == 1
    assert policy.limit("crm_contact_id:sbis") == 2
    assert policy.limit_key(Identifier("crm_contact_id", "amocrm:1")) == "crm_contact_id:amocrm"  # built-ins stay
    assert normalizer.normalize("messenger_id", "ICQ:@123456") == Identifier("messenger_id", "icq:123456")
    assert normalizer.normalize("messenger_id", "telegram:@Ivan") == Identifier("messenger_id", "telegram:ivan")


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("IDSTREAM_CRM_SYSTEMS", "amo crm", "'amo crm'"),
        ("IDSTREAM_CRM_SYSTEMS", "amo,te:st", "'te:st'"),
        ("IDSTREAM_CRM_SYSTEMS", "amo,_x", "'_x'"),
        ("IDSTREAM_CRM_SYSTEMS", "a" * 33, "at most 32"),
        ("IDSTREAM_CRM_SYSTEMS", '["amo", 1]', "separated by commas"),
        ("IDSTREAM_CRM_SYSTEMS", '["amo"', "JSON"),
        ("IDSTREAM_MESSENGER_PLATFORMS", "icq,вконтакте", "'вконтакте'"),
    ],
)
def test_bad_systems_and_platforms_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    text = str(caught.value)
    assert name.removeprefix("IDSTREAM_").lower() in text
    assert problem in text


def test_a_per_system_limit_needs_a_configured_system(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.setenv("IDSTREAM_KIND_LIMITS", '{"crm_contact_id:amo": 2}')
    with pytest.raises(ConfigurationError, match="crm_contact_id:amo"):
        Settings().policy()
    monkeypatch.setenv("IDSTREAM_KIND_LIMITS", '{"phone:mobile": 2}')
    with pytest.raises(ConfigurationError, match="phone:mobile"):
        Settings().policy()
    monkeypatch.setenv("IDSTREAM_CRM_SYSTEMS", "amo")
    monkeypatch.setenv("IDSTREAM_KIND_LIMITS", '{"crm_contact_id:amo": 2}')
    assert Settings().policy().limit("crm_contact_id:amo") == 2


def test_the_device_bound_and_number_type_weights_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.setenv("IDSTREAM_SHARED_DEVICES", '{"phone": 6}')
    monkeypatch.setenv("IDSTREAM_NUMBER_TYPE_WEIGHTS", '{"fixed_line": 3, "voip": 5}')
    policy = Settings().policy()
    assert policy.shared_devices == {"phone": 6}
    assert policy.number_type_weights == {"fixed_line": 3, "voip": 5}
    monkeypatch.setenv("IDSTREAM_SHARED_DEVICES", "{}")
    assert Settings().policy().shared_devices == {}
    monkeypatch.setenv("IDSTREAM_NUMBER_TYPE_WEIGHTS", '{"fixed_line": -1}')
    with pytest.raises(ConfigurationError, match="fixed_line"):
        Settings().policy()


def test_ingest_tokens_and_hook_secrets_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.setenv("IDSTREAM_INGEST_TOKENS", '["ingest-token-0123456789"]')
    monkeypatch.setenv("IDSTREAM_HOOK_SECRETS", '{"tilda": "tilda-secret-0123456789"}')
    settings = Settings()
    assert settings.ingest_token_bytes() == (b"ingest-token-0123456789",)
    assert settings.hook_secret_bytes() == {"tilda": b"tilda-secret-0123456789"}
    assert {"ingest-token-0123456789", "tilda-secret-0123456789"} <= set(settings.secret_values())  # scrubbed
    assert "0123456789" not in repr(settings)
    monkeypatch.setenv("IDSTREAM_HOOK_SECRETS", '{"tilda": "short"}')
    with pytest.raises(ValidationError, match="tilda"):
        Settings()
