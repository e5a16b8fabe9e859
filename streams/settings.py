"""The one place idstream reads its environment: ``IDSTREAM_*`` variables (or a ``.env`` file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import redis
from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from identity import ConfigurationError, IdentityGraph, JunkPolicy, Normalizer, NormalizerConfig, ResolutionPolicy
from identity.normalize import DEFAULT_CRM_SYSTEMS, DEFAULT_MESSENGER_PLATFORMS, validate_prefix_names
from identity.policy import (
    DEFAULT_KIND_PRIORITY,
    DEFAULT_LEAD_POINTS,
    DEFAULT_LIMITS,
    DEFAULT_LOST_STAGES,
    DEFAULT_NUMBER_TYPE_WEIGHTS,
    DEFAULT_SHARED_CLUSTERS,
    DEFAULT_SHARED_DEVICES,
    DEFAULT_SHARED_PERSONS,
    DEFAULT_WON_STAGES,
)
from identity.triggers import RULES as TRIGGER_RULES
from identity.triggers import TriggerRules
from sinks.warehouse import WarehouseTopics, WarehouseWriter, connect
from sinks.warehouse.report import ReportSettings
from sinks.webhook import WebhookEndpoint
from streams.processor import OutputTopics
from streams.redis_errors import sync_client
from streams.redis_store import RedisIdentityStore

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every operator setting. Complex values are JSON, e.g. ``IDSTREAM_KIND_LIMITS='{"phone": 3}'``."""

    model_config = SettingsConfigDict(env_prefix="IDSTREAM_", env_file=".env", extra="ignore", frozen=True)

    default_region: str = Field("RU", description="Region for phone numbers written without a country code.")
    extra_kinds: list[str] = Field(default_factory=list, description="Identifier kinds beyond the v1 set.")
    kind_limits: dict[str, int] = Field(
        default_factory=dict,
        description="Per-kind maximum of distinct values per person (overrides defaults).",
    )
    kind_priority: list[str] = Field(default_factory=lambda: list(DEFAULT_KIND_PRIORITY))
    anchor_kinds: list[str] = Field(default_factory=lambda: ["crm_contact_id"])
    source_trust: dict[str, int] = Field(default_factory=dict)
    recent_touches: int = 20
    junk_values: dict[str, list[str]] = Field(
        default_factory=dict, description="Extra normalized values per kind that never link anything."
    )
    junk_email_domains: list[str] = Field(default_factory=list)
    normalizer_cache_size: int = 1 << 18
    crm_systems: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CRM systems beyond the built-in ones (amocrm, bitrix24, dynamics, 1c, retailcrm, megaplan, "
        "salesforce, hubspot) that a crm_contact_id may name as <system>:<id>, comma-separated (IDSTREAM_CRM_SYSTEMS="
        "amo,sbis). A person holds up to the crm_contact_id limit per system; values of other prefixes stay ids of "
        "the unnamed system.",
    )
    messenger_platforms: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Messenger platforms beyond the built-in ones (telegram, vk, whatsapp, viber, max) that a "
        "messenger_id may name as <platform>:<id>, comma-separated; their ids take the generic rule (lower-case, "
        "no leading @). A new name is a platform of its own, never an alias of a built-in one.",
    )

    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("IDSTREAM_REDIS_URL", "REDIS_URL"),
        description="Redis for the identity graph; unset means the embedded runtime starts one.",
    )
    redis_prefix: str = Field("idstream", description="Hash tag and prefix of every key of the graph.")
    dedup_days: int = Field(
        14, ge=1, description="Days an applied event id is remembered: a redelivery within them changes nothing."
    )
    kafka_bootstrap_servers: str | None = Field(
        None,
        validation_alias=AliasChoices("IDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers; unset means the embedded runtime starts a broker.",
    )

    app_id: str = Field("idstream", description="Kafka consumer group of the workers.")
    touch_topics: list[str] = Field(
        default_factory=lambda: ["touches.site", "touches.calls", "touches.forms", "touches.crm"]
    )
    profiles_topic: str = "profiles.updates"
    changes_topic: str = "identity.changes"
    dlq_topic: str = "touches.dlq"
    triggers_topic: str = "triggers"
    topic_partitions: int = Field(4, ge=1)
    batch_size: int = Field(500, ge=1, description="Most events per batch (one Redis call).")
    batch_within: float = Field(
        0.02, gt=0, description="Seconds to wait for a batch to fill (under load batches fill before that)."
    )
    producer_batch_bytes: int = Field(
        1 << 20, ge=16384, description="Largest batch of output messages per partition (Faust's default: 16 KiB)."
    )
    fetch_max_wait: float = Field(
        0.01, gt=0, le=5, description="Seconds a consumer fetch may wait at the broker for records (Faust: 1.5)."
    )
    broker_session_timeout: float = Field(
        10.0, gt=0, description="Seconds; group joins wait on it (Faust's 60 s default makes startup slow)."
    )
    give_up_after: float = Field(60.0, ge=0, description="Seconds of store outage before the worker exits.")
    redis_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a worker waits for one Redis call. Longer than the longest script a batch runs: a "
        "call that times out is retried (the script meets BUSY until the first one ends, then finds it applied).",
    )
    api_redis_timeout: float = Field(
        3.0, gt=0, description="Seconds the lookup API waits for Redis (or for a free connection) before a 503."
    )
    api_redis_connections: int = Field(
        64, ge=1, description="Redis connections of one lookup API process; more concurrent lookups queue for one."
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=65_536,
        description="The largest message the broker takes (Apache Kafka's message.max.bytes default: 1,000,012). "
        "A profile update is cut to fit below it; an output that still does not fit becomes a dead letter.",
    )
    max_future_skew: float = Field(
        86_400.0,
        ge=0,
        description="Seconds an event's occurred_at may lie ahead of the worker's clock; later ones are dead "
        "letters (a touch dated 2199 would pin a person's last touch and name forever).",
    )
    dlq_retention_days: float = Field(
        30.0,
        gt=0,
        description="Days the dead-letter topics keep a message (they hold raw input: an erased person's values "
        "leave them at the latest then). Applies to topics `idstream topics` creates.",
    )
    stall_after: float = Field(
        180.0,
        gt=0,
        description="/healthz fails when a batch has run this long, or work waits and no batch ended for this long.",
    )

    webhooks: list[WebhookEndpoint] = Field(
        default_factory=list,
        description='HTTP endpoints for triggers (JSON list: [{"name", "url", "secret", "rules"?, ...}]).',
    )
    webhook_dlq_topic: str = "webhooks.dlq"
    webhook_concurrency: int = Field(32, ge=1, description="Deliveries in flight at once per webhook worker.")

    shared_persons: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_SHARED_PERSONS),
        description="Shared-identifier detection: a value of a kind is shared when seen with more persons (JSON).",
    )
    shared_clusters: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_SHARED_CLUSTERS),
        description="...or, when nobody claimed it beside their own identifiers, with more clusters (JSON).",
    )
    event_types: dict[str, dict[str, bool]] = Field(
        default_factory=dict,
        description='Event types of your own (JSON: {"webinar": {"marketing": true, "lead": true}}), each with flags '
        "links (default true), marketing, lead, conversion (a won deal: attributes.amount, attributes.order_id).",
    )
    tracking_numbers: dict[str, str] = Field(
        default_factory=dict,
        description='Call-tracking numbers and their channels (JSON: {"+7 495 123-45-67": "yandex/cpc/brand"}): a '
        "call without UTM tags takes the channel of the number it dialled.",
    )
    shared_devices: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_SHARED_DEVICES),
        description="...or when the persons and unnamed device clusters it joins, each weighed by the phone "
        "number's type, exceed this bound (JSON; {} turns the rule off).",
    )
    number_type_weights: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_NUMBER_TYPE_WEIGHTS),
        description="Weight of a phone number's type (fixed_line, voip, toll_free, ...) in that bound (JSON; "
        "types not listed weigh 1).",
    )
    erasure_key: SecretStr = Field(
        SecretStr("idstream-development-erasure-key"),
        description="Key of the hashes erased identifiers are remembered by. Set a long random secret in "
        "production and never change it: a changed key forgets every erasure.",
    )
    api_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens of the lookup API (JSON list, 16+ characters each); none: loopback only, open.",
    )
    ingest_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens that may write touch events through POST /v1/touches (JSON list, 16+ "
        "characters each), separate from the lookup tokens: a lookup token cannot write, an ingest token cannot "
        "read. None: writing is open only when the whole API is (no lookup tokens, loopback).",
    )
    hook_secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Per-source secrets of the webhook receivers, /v1/hooks/{source}/{secret} (JSON object "
        'source -> secret of 16+ characters, e.g. {"tilda": "..."}); a source without one is not served.',
    )
    hook_forms: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Generic form receivers: form name -> {field: identifier kind or attribute} (JSON), e.g. "
        '{"landing": {"tel": "phone", "mail": "email", "fio": "name"}}; served at /v1/hooks/form/{secret}'
        "?form=landing with the secret of source 'form'.",
    )
    hook_timezone: str = Field(
        "Europe/Moscow", description="IANA zone of the local times webhooks carry (a call tracker's calltime)."
    )
    amocrm_url: str | None = Field(
        None, description="The amoCRM account (https://<subdomain>.amocrm.ru) whose deal webhooks are received."
    )
    amocrm_token: SecretStr | None = Field(
        None, description="A long-lived amoCRM API token of that account (read access to deals and contacts)."
    )
    bitrix24_url: SecretStr | None = Field(
        None, description="A Bitrix24 incoming webhook (https://<portal>/rest/<user>/<secret>/) with CRM read access."
    )
    bitrix24_app_token: SecretStr | None = Field(
        None, description="The token Bitrix24 shows for the outgoing webhook (auth[application_token])."
    )
    direct_url: str = Field(
        "https://api.direct.yandex.com/json/v5/reports", description="The Yandex Direct Reports service."
    )
    direct_token: SecretStr | None = Field(None, description="An OAuth token of Yandex Direct (read access).")
    direct_login: str | None = Field(None, description="The advertiser's login (Client-Login), for agencies.")
    vkads_url: str = Field("https://ads.vk.com", description="The VK Ads API.")
    vkads_client_id: str | None = Field(None, description="The VK Ads application's client id.")
    vkads_client_secret: SecretStr | None = Field(None, description="The VK Ads application's client secret.")
    metrica_url: str = Field("https://api-metrika.yandex.net", description="The Yandex Metrica API.")
    metrica_token: SecretStr | None = Field(None, description="An OAuth token with read access to the counter.")
    metrica_counter: str | None = Field(None, description="The Metrica counter `idstream connect metrica` reads.")
    metrica_timezone: str = Field("Europe/Moscow", description="The counter's time zone (its visits' times).")
    api_host: str = Field("127.0.0.1", description="Address the lookup API listens on.")
    api_port: int = Field(8080, ge=0, le=65535)
    metrics_host: str = Field("127.0.0.1", description="Address of a worker's /metrics, /healthz and /readyz.")
    metrics_port: int = Field(9108, ge=0, le=65535, description="Port of a worker's /metrics, /healthz, /readyz.")
    worker_metrics_urls: list[str] = Field(
        default_factory=list,
        description="The workers' /metrics URLs (JSON list) the console's Health page reads: applied events, dead "
        "letters, blob alerts. `idstream up` sets its worker's.",
    )
    log_format: Literal["json", "text"] = Field("json", description="json: one object per line, for collectors.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    blob_component_size: int = Field(
        200,
        ge=0,
        description="A worker warns (and counts idstream_blob_alerts_total) when a batch writes an identity "
        "component with more identifiers than this: a blob forming. 0: off.",
    )

    lead_points: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_LEAD_POINTS),
        description="Lead-score points per action: TYPE, TYPE:ATTRIBUTE or TYPE:ATTRIBUTE=VALUE -> points.",
    )
    won_stages: list[str] = Field(default_factory=lambda: sorted(DEFAULT_WON_STAGES))
    trigger_rules: list[str] = Field(
        default_factory=lambda: list(TRIGGER_RULES), description="Triggers to fire; [] turns them off."
    )
    lead_score_thresholds: list[int] = Field(default_factory=lambda: [50, 100])
    missed_call_minutes: int = Field(
        30, ge=1, le=7 * 24 * 60, description="A missed call not returned within this many minutes fires a trigger."
    )
    missed_call_check_s: float = Field(15.0, gt=0, description="Seconds between a worker's missed-call checks.")
    returning_window_hours: float = Field(
        24.0, gt=0, description="returning_with_open_deal fires once per deal per window of event time."
    )
    trigger_max_age_hours: float = Field(
        24.0, ge=0, description="Touches older than this fire no trigger (replays stay quiet); 0: no limit."
    )
    lost_stages: list[str] = Field(default_factory=lambda: sorted(DEFAULT_LOST_STAGES))
    channel_ranks: dict[str, int] = Field(
        default_factory=dict,
        description='Ranks of "source/medium" pairs for the rank attribution model, e.g. '
        '{"yandex/cpc": 100, "google/*": 50}; higher wins, the earliest among equals; unlisted pairs rank 0.',
    )
    attribution_touches: int = Field(
        100, ge=0, description="Marketing touches per person kept for attribution in the golden profile."
    )
    hub_group_size: int = Field(
        64,
        ge=8,
        description="A shared identifier whose evidence group holds more identifiers than this becomes a hub: it "
        "leaves the group for good and keeps counts and a sample of the newest persons seen with it.",
    )

    warehouse_url: str = Field(
        default_factory=lambda: f"sqlite:///{Path.home() / '.idstream' / 'warehouse.db'}",
        description="The warehouse: postgresql://user@host/db in production; a SQLite file by default.",
    )
    spend_topic: str = Field("ad.spend", description="Topic of ad_spend messages (read by the warehouse sink).")
    warehouse_dlq_topic: str = "warehouse.dlq"
    report_model: str = Field("last_non_direct", description="Attribution model of reports when none is asked.")
    report_currency: str = Field("RUB", pattern=r"^[A-Z]{3}$", description="Currency of report money columns.")
    currency_rates: dict[str, float] = Field(
        default_factory=dict,
        description='Value of one unit of other currencies in the report currency, e.g. {"USD": 92.5}.',
    )
    report_timezone: str = Field("UTC", description="IANA time zone whose days the report periods are.")
    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".idstream" / "data",
        description="Where `idstream up` keeps its embedded broker's topics, Redis' append-only file and the "
        "SQLite warehouse between runs (`up --data-dir`). `demo` always starts afresh in a temporary directory.",
    )
    state_file: Path = Field(
        default_factory=lambda: Path.home() / ".idstream" / "runtime.json",
        description="Where `idstream up` leaves the addresses of the runtime it started.",
    )

    @field_validator("api_tokens", "ingest_tokens")
    @classmethod
    def _strong_tokens(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        for i, token in enumerate(tokens):
            if len(token.get_secret_value()) < 16:
                raise ValueError(f"token #{i + 1} is shorter than 16 characters")
        return tokens

    @field_validator("hook_secrets")
    @classmethod
    def _strong_hook_secrets(cls, secrets: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for source, secret in secrets.items():
            if len(secret.get_secret_value()) < 16:
                raise ValueError(f"the secret of hook source {source!r} is shorter than 16 characters")
        return secrets

    @field_validator("crm_systems", "messenger_platforms", mode="before")
    @classmethod
    def _prefix_names(cls, value: object, info: ValidationInfo) -> object:
        """A comma-separated list (or a JSON list) of names, lower-cased; each a valid prefix."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON list of names: {exc}") from None
            else:
                value = text.split(",")
        if not isinstance(value, list | tuple | set | frozenset) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected names separated by commas, e.g. 'amo,sbis'")
        names = [name.strip().lower() for name in value]
        names = [name for name in names if name]
        try:
            validate_prefix_names("CRM system" if info.field_name == "crm_systems" else "messenger platform", names)
        except ConfigurationError as exc:
            raise ValueError(exc.message) from None
        return sorted(set(names))

    def crm_system_names(self) -> frozenset[str]:
        """Every CRM system a ``crm_contact_id`` may name: the built-in ones and ``IDSTREAM_CRM_SYSTEMS``."""
        return DEFAULT_CRM_SYSTEMS | frozenset(self.crm_systems)

    def messenger_platform_names(self) -> frozenset[str]:
        """Every platform a ``messenger_id`` may name: the built-in ones and ``IDSTREAM_MESSENGER_PLATFORMS``."""
        return DEFAULT_MESSENGER_PLATFORMS | frozenset(self.messenger_platforms)

    def secret_values(self) -> list[str]:
        """Every secret a log line must never show: tokens, keys, webhook secrets, server passwords."""
        found = [t.get_secret_value() for t in [*self.api_tokens, *self.ingest_tokens]]
        found.extend(s.get_secret_value() for s in self.hook_secrets.values())
        for token in (
            self.amocrm_token,
            self.metrica_token,
            self.bitrix24_url,
            self.bitrix24_app_token,
            self.direct_token,
            self.vkads_client_secret,
        ):
            if token is not None:
                found.append(token.get_secret_value())
        found.append(self.erasure_key.get_secret_value())
        found.extend(w.secret.get_secret_value() for w in self.webhooks)
        for url in (self.redis_url, self.warehouse_url, self.kafka_bootstrap_servers):
            password = urlsplit(url).password if url and "://" in url else None
            if password:
                found.append(password)
        return found

    def token_bytes(self) -> tuple[bytes, ...]:
        return tuple(t.get_secret_value().encode() for t in self.api_tokens)

    def ingest_token_bytes(self) -> tuple[bytes, ...]:
        return tuple(t.get_secret_value().encode() for t in self.ingest_tokens)

    def hook_secret_bytes(self) -> dict[str, bytes]:
        return {source: s.get_secret_value().encode() for source, s in self.hook_secrets.items()}

    def normalizer_config(self) -> NormalizerConfig:
        defaults = JunkPolicy()
        blocked = {k: frozenset(v) for k, v in defaults.blocked_values.items()}
        for kind, values in self.junk_values.items():
            blocked[kind] = blocked.get(kind, frozenset()) | frozenset(values)
        junk = JunkPolicy(
            blocked_values=blocked,
            email_domains=defaults.email_domains | frozenset(d.lower() for d in self.junk_email_domains),
        )
        return NormalizerConfig(
            default_region=self.default_region.upper(),
            extra_kinds=frozenset(self.extra_kinds),
            junk=junk,
            cache_size=self.normalizer_cache_size,
            crm_systems=self.crm_system_names(),
            messenger_platforms=self.messenger_platform_names(),
        )

    def policy(self) -> ResolutionPolicy:
        return ResolutionPolicy(
            limits={**DEFAULT_LIMITS, **self.kind_limits},
            kind_priority=tuple(self.kind_priority),
            anchor_kinds=frozenset(self.anchor_kinds),
            source_trust=dict(self.source_trust),
            recent_touches=self.recent_touches,
            lead_points=dict(self.lead_points),
            won_stages=frozenset(self.won_stages),
            lost_stages=frozenset(self.lost_stages),
            shared_persons=dict(self.shared_persons),
            shared_clusters=dict(self.shared_clusters),
            shared_devices=dict(self.shared_devices),
            tracking_numbers=dict(self.tracking_numbers),
            event_types={name: dict(flags) for name, flags in self.event_types.items()},
            number_type_weights=dict(self.number_type_weights),
            channel_ranks=dict(self.channel_ranks),
            attribution_touches=self.attribution_touches,
            hub_group_size=self.hub_group_size,
            crm_systems=self.crm_system_names(),
        )

    def trigger_rules_config(self) -> TriggerRules:
        return TriggerRules(
            enabled=frozenset(self.trigger_rules),
            lead_thresholds=tuple(self.lead_score_thresholds),
            returning_window_s=max(1, round(self.returning_window_hours * 3600)),
            missed_call_window_s=self.missed_call_minutes * 60,
            max_age_s=self.trigger_max_age_hours * 3600 or None,
        )

    def redis_client(self, url: str) -> redis.Redis:
        """A worker's Redis client: explicit timeouts (``IDSTREAM_REDIS_TIMEOUT``), a pool that waits."""
        return sync_client(url, timeout=self.redis_timeout)

    def output_topics(self) -> OutputTopics:
        return OutputTopics(self.profiles_topic, self.changes_topic, self.dlq_topic, self.triggers_topic)

    def redis_store(self, client: redis.Redis) -> RedisIdentityStore:
        """The Redis identity graph configured by these settings."""
        return RedisIdentityStore(
            client,
            self.policy(),
            Normalizer(self.normalizer_config()),
            self.redis_prefix,
            self.erasure_key.get_secret_value().encode(),
            dedup_days=self.dedup_days,
        )

    def warehouse_writer(self) -> WarehouseWriter:
        """The warehouse sink configured by these settings (the schema is migrated by the caller)."""
        topics = WarehouseTopics(tuple(self.touch_topics), self.profiles_topic, self.spend_topic)
        return WarehouseWriter(
            connect(self.warehouse_url),
            self.policy(),
            Normalizer(self.normalizer_config()),
            self.erasure_key.get_secret_value().encode(),
            topics,
        )

    def report_settings(self) -> ReportSettings:
        return ReportSettings(self.report_model, self.report_currency, dict(self.currency_rates), self.report_timezone)

    def graph(self) -> IdentityGraph:
        """An in-memory identity graph configured by these settings."""
        return IdentityGraph(
            self.policy(), Normalizer(self.normalizer_config()), self.erasure_key.get_secret_value().encode()
        )
