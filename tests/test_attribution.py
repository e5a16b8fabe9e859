"""Attribution models on hand-computed paths, and the golden profile's attribution in both stores."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from identity import ConfigurationError, CrmInfo, ResolutionPolicy, Utm
from identity.attribution import (
    DIRECT,
    MODELS,
    Channel,
    ChannelRanks,
    PathStep,
    assists,
    attribute,
    attribute_all,
    channel_of,
)
from tests.conftest import StoreFactory, touch

YANDEX = Channel("yandex", "cpc", "brand")
GOOGLE = Channel("google", "organic", "(not set)")
EMAIL = Channel("email", "newsletter", "november")
VK = Channel("vk", "cpc", "(not set)")


def path(*channels: Channel) -> list[PathStep]:
    return [(i, c) for i, c in enumerate(channels)]


#: The issue's client: an ad, a direct return, a search, a newsletter, a direct visit before the deal.
FIVE = path(YANDEX, DIRECT, GOOGLE, EMAIL, DIRECT)


def approx(credits: dict[Channel, float]) -> dict[Channel, object]:
    return {c: pytest.approx(v) for c, v in credits.items()}


def test_first_and_last_touch_take_everything() -> None:
    assert attribute(FIVE, "first") == {YANDEX: 1.0}
    assert attribute(FIVE, "last") == {DIRECT: 1.0}


def test_last_non_direct_skips_direct_touches_and_falls_back_to_direct() -> None:
    assert attribute(FIVE, "last_non_direct") == {EMAIL: 1.0}
    assert attribute(path(DIRECT, DIRECT), "last_non_direct") == {DIRECT: 1.0}
    assert attribute(path(VK, DIRECT, DIRECT), "last_non_direct") == {VK: 1.0}


def test_position_gives_40_20_40() -> None:
    # first 0.4, last 0.4, the three between 0.2 / 3 each; direct is both last and second
    assert attribute(FIVE, "position") == approx({YANDEX: 0.4, DIRECT: 0.4 + 0.2 / 3, GOOGLE: 0.2 / 3, EMAIL: 0.2 / 3})
    assert attribute(path(YANDEX, EMAIL), "position") == {YANDEX: 0.5, EMAIL: 0.5}
    assert attribute(path(YANDEX), "position") == {YANDEX: 1.0}
    assert attribute(path(YANDEX, GOOGLE, YANDEX), "position") == approx({YANDEX: 0.8, GOOGLE: 0.2})


def test_linear_shares_equally_per_touch() -> None:
    assert attribute(FIVE, "linear") == approx({YANDEX: 0.2, DIRECT: 0.4, GOOGLE: 0.2, EMAIL: 0.2})


def test_rank_takes_the_highest_rank_and_the_earliest_among_equals() -> None:
    ranks = ChannelRanks({"yandex/cpc": 10, "google/organic": 10, "email/*": 5})
    assert attribute(FIVE, "rank", ranks) == {YANDEX: 1.0}  # yandex and google tie: the earlier wins
    assert attribute(path(GOOGLE, YANDEX), "rank", ranks) == {GOOGLE: 1.0}
    assert attribute(FIVE, "rank", ChannelRanks({"email/newsletter": 20, "yandex/cpc": 10})) == {EMAIL: 1.0}
    # a path of unranked touches goes to its first touch
    assert attribute(path(VK, GOOGLE), "rank", ChannelRanks({"yandex/cpc": 1})) == {VK: 1.0}
    assert attribute(path(VK, GOOGLE), "rank") == {VK: 1.0}


def test_rank_dictionary_exact_beats_source_wildcard_beats_medium_wildcard() -> None:
    ranks = ChannelRanks({"Yandex / CPC": 30, "yandex/*": 20, "*/cpc": 10, "*/*": -1})
    assert ranks.rank(YANDEX) == 30
    assert ranks.rank(Channel("yandex", "display", "x")) == 20
    assert ranks.rank(VK) == 10
    assert ranks.rank(GOOGLE) == -1  # '*/*' sets the default
    for bad in ("yandex", "/cpc", "yandex/", "a/b/c"):
        with pytest.raises(ConfigurationError, match="source/medium"):
            ChannelRanks({bad: 1})
    with pytest.raises(ConfigurationError, match="integer"):
        ChannelRanks({"yandex/cpc": "high"})  # type: ignore[dict-item]


def test_an_empty_path_credits_nobody() -> None:
    assert all(attribute([], model) == {} for model in MODELS)


def test_unknown_model_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown attribution model 'u_shaped'"):
        attribute(FIVE, "u_shaped")  # type: ignore[arg-type]


def test_assists_are_channels_before_the_final_touch() -> None:
    assert assists(FIVE) == {YANDEX, DIRECT, GOOGLE, EMAIL}
    assert assists(path(YANDEX, EMAIL)) == {YANDEX}
    assert assists(path(YANDEX)) == frozenset()


def test_channels_are_trimmed_lowercased_and_default_to_direct() -> None:
    visit = touch("v", 0, ("ga_client_id", "GA1.2.1.1"), utm=Utm(" Yandex", "CPC ", "Brand  Moscow"))
    assert channel_of(visit) == Channel("yandex", "cpc", "brand moscow")
    assert channel_of(touch("v", 0, ("ga_client_id", "GA1.2.1.1"))) == DIRECT
    assert channel_of(touch("v", 0, ("ga_client_id", "GA1.2.1.1"), utm=Utm(None, "cpc"))) == DIRECT
    assert channel_of(touch("v", 0, ("ga_client_id", "GA1.2.1.1"), utm=Utm("google"))) == Channel(
        "google", "(not set)", "(not set)"
    )
    stage = touch("d", 0, ("crm_contact_id", "1"), type="crm_stage", crm=CrmInfo("d", "new"), utm=Utm("yandex"))
    assert channel_of(stage) is None  # a CRM stage change is a conversion, not a marketing touch


CHANNELS = st.sampled_from([YANDEX, GOOGLE, EMAIL, VK, DIRECT])


@given(st.lists(CHANNELS, min_size=1, max_size=30), st.dictionaries(st.sampled_from(["yandex/cpc", "vk/*"]),
       st.integers(-5, 5)))  # fmt: skip
def test_every_model_gives_non_negative_credits_summing_to_one_on_path_channels(
    channels: list[Channel], ranks: dict[str, int]
) -> None:
    steps = path(*channels)
    for model, credits in attribute_all(steps, ChannelRanks(ranks)).items():
        assert math.isclose(sum(credits.values()), 1.0), model
        assert all(v > 0 for v in credits.values()), model
        assert set(credits) <= set(channels), model
    assert attribute(steps, "linear") == approx({c: channels.count(c) / len(channels) for c in set(channels)})


# ----------------------------------------------------------------------------- in the golden profile

GA = ("ga_client_id", "GA1.2.555.1700000000")
PHONE = ("phone", "+7 916 555-44-33")


def journey() -> list:  # type: ignore[type-arg]
    """Visits from yandex and google, a direct return, a call, a deal, a newsletter visit, the deal won."""
    return [
        touch("v1", 0, GA, utm=Utm("yandex", "cpc", "brand")),
        touch("v2", 60 * 24 * 10, GA, utm=Utm("google", "organic")),
        touch("v3", 60 * 24 * 20, GA),
        touch("c1", 60 * 24 * 21, PHONE, GA, type="call", source="calltouch", utm=Utm("google", "organic")),
        touch("d1", 60 * 24 * 22, PHONE, ("crm_contact_id", "amo-7"), type="crm_stage", source="amocrm",
              crm=CrmInfo("deal-1", "new", None, "sales", 900_000.0)),
        touch("v4", 60 * 24 * 40, GA, utm=Utm("email", "newsletter", "november")),
        touch("d2", 60 * 24 * 90, ("crm_contact_id", "amo-7"), type="crm_stage", source="amocrm",
              crm=CrmInfo("deal-1", "won", "new", "sales", 1_000_000.0)),
    ]  # fmt: skip


def by_model(block: dict) -> dict[str, list[tuple[str, float]]]:  # type: ignore[type-arg]
    return {m: [(r["source"], round(r["credit"], 4)) for r in rows] for m, rows in block["models"].items()}


@pytest.mark.parametrize("order", ["in order", "reversed"])
def test_the_golden_profile_shows_the_persons_and_each_deals_attribution(make_store: StoreFactory, order: str) -> None:
    policy = ResolutionPolicy(channel_ranks={"google/organic": 5, "yandex/cpc": 1})
    store = make_store(policy)
    events = journey()
    store.apply_many(events if order == "in order" else list(reversed(events)))
    pid = store.lookup_raw("crm_contact_id", "amo-7")
    profile = store.profile(pid)
    assert profile is not None
    person = profile["attribution"]
    # the person became a lead with the call (day 21): v1, v2, v3 and the call itself
    assert person["lead_at"] == events[3].occurred_at.isoformat()
    assert person["touches"] == 4
    assert person["truncated"] is False
    assert by_model(person) == {
        "first": [("yandex", 1.0)],
        "last": [("google", 1.0)],
        "last_non_direct": [("google", 1.0)],
        "position": [("google", 0.5), ("yandex", 0.4), ("(direct)", 0.1)],
        "linear": [("google", 0.5), ("(direct)", 0.25), ("yandex", 0.25)],
        "rank": [("google", 1.0)],
    }
    deal = profile["deals"]["deal-1"]
    assert deal["status"] == "won"
    assert deal["created_at"] == events[4].occurred_at.isoformat()
    # the deal is credited by the path up to its creation: the newsletter visit came later
    assert deal["attribution"]["touches"] == 4
    assert by_model(deal["attribution"]) == by_model(person)


def test_a_path_longer_than_the_kept_touches_says_it_is_truncated(make_store: StoreFactory) -> None:
    store = make_store(ResolutionPolicy(attribution_touches=3))
    visits = [touch(f"v{i}", i, GA, utm=Utm("vk" if i else "yandex", "cpc")) for i in range(6)]
    store.apply_many([*reversed(visits), touch("f1", 10, GA, PHONE, type="form_submit")])
    profile = store.profile(store.lookup_raw(*GA))
    block = profile["attribution"]
    assert block["touches"] == 3
    assert block["truncated"] is True  # the lead came after touches that were not kept
    assert by_model(block)["first"] == [("yandex", 1.0)]  # the earliest are the ones kept
