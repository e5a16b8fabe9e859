"""The golden profile: what a person's touches add up to.

Every field is a commutative, associative fold over the person's touches
(maximum by a total order, sums, bounded top-N), so:

* aggregates of several identifiers combine into one person's profile at read time;
* the result does not depend on the order the touches arrived in;
* a touch is applied once per event id by the graph, so sums stay exact.

The fold runs once per event on the hot path, so :class:`Golden` keeps references
to the immutable :class:`~identity.touch.Touch` and plain tuples, and turns them
into the store-neutral form only when a profile is read (:meth:`Golden.serialize`,
then :func:`render`, which every store shares).
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson  # reading profiles (the lookup API's hot path) decodes every stored view

from identity.attribution import (
    NO_RULES,
    Channel,
    ChannelRanks,
    ChannelRules,
    PathStep,
    attribute_all,
    channel_of,
    credits_view,
)
from identity.policy import ResolutionPolicy
from identity.touch import KEY_TIME_DIGITS, AttributeValue, Touch, TouchType, key_text

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_DEALS",
    "MAX_INTERESTS",
    "MAX_VALUE_CHARS",
    "Golden",
    "Stored",
    "contribution",
    "fit",
    "render",
]

#: Caps of the golden profile as served (profiles.updates and the lookup API): one person's profile stays a
#: bounded message however many distinct pages, attributes or deals its touches carry. What a cap leaves out
#: is counted under ``omitted``; touches themselves are never lost (the warehouse and the topics keep them).
MAX_ATTRIBUTES = 100  # attribute names: the most trusted, newest claims (``name`` always)
MAX_INTERESTS = 50  # entries of interests.projects and of interests.pages: the most visited
MAX_DEALS = 50  # deals: the most recently updated
MAX_VALUE_CHARS = 2_000  # characters of one attribute's text value (the full value stays on its touch)
_ALWAYS_SHOWN = ("name",)

#: Touch types that are contacts with the person (manual links are not).
_CONTACT_TYPES = frozenset(
    {
        TouchType.SITE_VISIT,
        TouchType.CALL,
        TouchType.FORM_SUBMIT,
        TouchType.CRM_STAGE,
        TouchType.MESSAGE,
        TouchType.EMAIL_EVENT,
        TouchType.PURCHASE,
        TouchType.OFFLINE_VISIT,
    }
)
#: Attributes counted as interests.
_INTEREST_ATTRIBUTES = ("project", "page")

EventKey = tuple[int, str]
#: (key, touch): a touch in the total order of events.
Stamped = tuple[EventKey, Touch]
#: ((trust, key), value, touch): one source's claim on an attribute; the highest first element survives.
Claim = tuple[tuple[int, EventKey], AttributeValue, Touch]


def _key(stamped: Stamped) -> EventKey:
    return stamped[0]


def _step_key(step: PathStep) -> EventKey:
    key: EventKey = step[0]
    return key


def _touch_view(touch: Touch) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": touch.event_id,
        "type": touch.type.value,
        "source": touch.source,
        "occurred_at": touch.occurred_at.isoformat(),
    }
    if touch.utm is not None:
        out["utm"] = touch.utm.to_dict()
    if touch.call is not None:
        out["call"] = touch.call.to_dict()
    for name in _INTEREST_ATTRIBUTES:
        value = touch.attributes.get(name)
        if isinstance(value, str):
            out[name] = value
    return out


def _when(moment: datetime) -> str:
    return moment.isoformat()


@dataclass(slots=True)
class Golden:
    """The aggregate behind a golden profile (identifiers are held by the graph)."""

    attributes: dict[str, Claim] = field(default_factory=dict)
    projects: dict[str, int] = field(default_factory=dict)
    pages: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    first: Stamped | None = None
    last: Stamped | None = None
    recent: list[Stamped] = field(default_factory=list)  # ascending by key
    deals: dict[str, Stamped] = field(default_factory=dict)  # deal id -> its latest crm_stage touch
    score: int = 0
    path: list[PathStep] = field(default_factory=list)  # the earliest marketing touches, ascending by key
    path_total: int = 0  # every marketing touch, kept or not
    lead: EventKey | None = None  # the first call or form
    created: dict[str, EventKey] = field(default_factory=dict)  # deal id -> its first crm_stage touch

    def add(
        self,
        touch: Touch,
        key: EventKey,
        trust: int,
        keep: int,
        *,
        points: int = 0,
        path_keep: int = 0,
        rules: ChannelRules | None = None,
    ) -> None:
        """Fold one touch in. ``trust`` ranks its attribute values; ``keep`` bounds ``recent``;
        ``points`` is what the touch adds to the lead score; ``path_keep`` bounds the attribution path."""
        self.score += points
        if touch.attributes:
            rank = (trust, key)
            attributes = self.attributes
            for name, value in touch.attributes.items():
                if value is not None:
                    held = attributes.get(name)
                    if held is None or rank > held[0]:
                        attributes[name] = (rank, value, touch)
        crm = touch.crm
        if crm is not None:
            deal = self.deals.get(crm.deal_id)
            if deal is None or key > deal[0]:
                self.deals[crm.deal_id] = (key, touch)
            created = self.created.get(crm.deal_id)
            if created is None or key < created:
                self.created[crm.deal_id] = key
        if touch.type not in _CONTACT_TYPES and not (rules and rules.is_contact(touch.type)):
            return
        channel = channel_of(touch, rules)
        if channel is not None:
            self._step(key, channel, path_keep)
            if (rules or NO_RULES).is_lead(touch.type) and (self.lead is None or key < self.lead):
                self.lead = key
        counts = self.counts
        counts[touch.type] = counts.get(touch.type, 0) + 1
        project = touch.attributes.get("project")
        if isinstance(project, str) and project:
            self.projects[project] = self.projects.get(project, 0) + 1
        page = touch.attributes.get("page")
        if isinstance(page, str) and page:
            self.pages[page] = self.pages.get(page, 0) + 1
        stamped = (key, touch)
        if self.first is None or key < self.first[0]:
            self.first = stamped
        if self.last is None or key > self.last[0]:
            self.last = stamped
        recent = self.recent
        if keep and (len(recent) < keep or key > recent[0][0]):
            if not recent or key > recent[-1][0]:
                recent.append(stamped)
            else:
                recent.insert(bisect.bisect_left(recent, key, key=_key), stamped)
            if len(recent) > keep:
                del recent[0]

    def _step(self, key: EventKey, channel: Channel, path_keep: int) -> None:
        self.path_total += 1
        path = self.path
        if len(path) < path_keep or (path and key < path[-1][0]):
            path.insert(bisect.bisect_left(path, key, key=_step_key), (key, channel))
            if len(path) > path_keep:
                path.pop()

    def last_key(self) -> EventKey | None:
        """The key of the newest contact folded in, if any."""
        return self.last[0] if self.last is not None else None

    def serialize(self) -> dict[str, Any]:
        """The aggregate in the store-neutral form that :func:`render` reads (see :func:`contribution`)."""
        out: dict[str, Any] = {
            "a": {k: [_rank_text(rank), _dumps(_attribute_view(v, t))] for k, (rank, v, t) in self.attributes.items()},
            "c": dict(self.counts),
            "pj": dict(self.projects),
            "pg": dict(self.pages),
            "r": [[key_text(k), _dumps(_touch_view(t))] for k, t in self.recent],
            "d": {d: [key_text(k), _dumps(_deal_view(t))] for d, (k, t) in self.deals.items()},
            "s": self.score,
        }
        if self.path_total:
            out["m"] = [[key_text(k), c.source, c.medium, c.campaign] for k, c in self.path]
            out["mn"] = self.path_total
        if self.lead is not None:
            out["ld"] = key_text(self.lead)
        if self.created:
            out["dc"] = {d: key_text(k) for d, k in self.created.items()}
        if self.first is not None:
            out["f"] = [key_text(self.first[0]), _dumps(_touch_view(self.first[1]))]
        if self.last is not None:
            out["l"] = [key_text(self.last[0]), _dumps(_touch_view(self.last[1]))]
        return out


def _deal_view(touch: Touch) -> dict[str, Any]:
    crm = touch.crm
    if crm is None:  # pragma: no cover - only touches with crm data are filed as deals
        raise ValueError(f"touch {touch.event_id} has no crm data")
    return {
        "deal_id": crm.deal_id,
        "stage": crm.stage,
        "previous_stage": crm.previous_stage,
        "pipeline": crm.pipeline,
        "amount": crm.amount,
        "source": touch.source,
        "event_id": touch.event_id,
        "updated_at": _when(touch.occurred_at),
    }


# ----------------------------------------------------------------------------- the store-neutral form
#
# A store that cannot hold Touch objects (Redis) folds *contributions* into per-identifier
# aggregates of this shape, comparing keys and ranks as byte strings:
#
#   {"a": {attr: [rank, payload]}, "c": {type: n}, "pj": {project: n}, "pg": {page: n},
#    "f": [key, view], "l": [key, view], "r": [[key, view], ...ascending], "d": {deal: [key, view]},
#    "s": lead-score points, "m": [[key, source, medium, campaign], ...ascending, the earliest only],
#    "mn": marketing touches, "ld": key of the first call or form, "dc": {deal: key of its first stage}}
#
# and :func:`render` turns any number of aggregates into the golden profile fields, exactly as
# :meth:`Golden.to_dict` does for the in-memory fold.


def _dumps(value: Any) -> str:
    """Compact, key-sorted JSON; orjson (5x the standard library: every touch is stored as a view)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # an integer beyond 64 bits: the standard library writes it
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _rank_text(rank: tuple[int, EventKey]) -> str:
    return f"{rank[0]:03d}{key_text(rank[1])}"


def _attribute_view(value: AttributeValue, touch: Touch) -> dict[str, Any]:
    return {"value": value, "source": touch.source, "event_id": touch.event_id, "occurred_at": _when(touch.occurred_at)}


def contribution(
    touch: Touch, key: EventKey, trust: int, points: int = 0, rules: ChannelRules | None = None
) -> dict[str, Any]:
    """What one touch adds to the aggregate of its strongest identifier, in the store-neutral form."""
    key_str = key_text(key)
    out: dict[str, Any] = {
        "k": key_str,
        "rank": _rank_text((trust, key)),
        "attrs": {name: _dumps(_attribute_view(v, touch)) for name, v in touch.attributes.items() if v is not None},
    }
    if points:
        out["pts"] = points
    if touch.crm is not None:
        out["deal"] = [touch.crm.deal_id, _dumps(_deal_view(touch))]
    if touch.type in _CONTACT_TYPES or (rules and rules.is_contact(touch.type)):
        channel = channel_of(touch, rules)
        if channel is not None:
            out["ch"] = [channel.source, channel.medium, channel.campaign]
            if (rules or NO_RULES).is_lead(touch.type):
                out["lead"] = 1
        out["type"] = touch.type.value
        out["view"] = _dumps(_touch_view(touch))
        for name, short in (("project", "project"), ("page", "page")):
            value = touch.attributes.get(name)
            if isinstance(value, str) and value:
                out[short] = value
    return out


def _counted(items: dict[str, int], name: str, omitted: dict[str, int]) -> dict[str, int]:
    """The most counted entries first, at most :data:`MAX_INTERESTS` (the rest counted in ``omitted``)."""
    ranked = sorted(items.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) > MAX_INTERESTS:
        omitted[name] = len(ranked) - MAX_INTERESTS
        del ranked[MAX_INTERESTS:]
    return dict(ranked)


def render(aggregates: Iterable[dict[str, Any]], policy: ResolutionPolicy) -> dict[str, Any]:
    """The golden-profile fields of a person from the aggregates of its identifiers.

    Deals carry ``status`` (``open``, ``won`` or ``lost`` by the policy's stages), so a change of
    the stage lists applies to every profile at once.
    """
    keep = policy.recent_touches
    score = 0
    attributes: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    projects: dict[str, int] = {}
    pages: dict[str, int] = {}
    first: list[str] | None = None
    last: list[str] | None = None
    recent: list[list[str]] = []
    deals: dict[str, list[str]] = {}
    steps: list[list[str]] = []
    marketing = 0
    lead: str | None = None
    created: dict[str, str] = {}
    for agg in aggregates:
        for name, claim in agg.get("a", {}).items():
            if name not in attributes or claim[0] > attributes[name][0]:
                attributes[name] = claim
        for mine, theirs in ((counts, agg.get("c")), (projects, agg.get("pj")), (pages, agg.get("pg"))):
            for name, n in (theirs or {}).items():
                mine[name] = mine.get(name, 0) + int(n)
        f, la = agg.get("f"), agg.get("l")
        if f and (first is None or f[0] < first[0]):
            first = f
        if la and (last is None or la[0] > last[0]):
            last = la
        recent.extend(agg.get("r") or [])
        for deal_id, deal in (agg.get("d") or {}).items():
            if deal_id not in deals or deal[0] > deals[deal_id][0]:
                deals[deal_id] = deal
        score += int(agg.get("s") or 0)
        if "mn" in agg:
            steps.extend(agg["m"] or [])
            marketing += int(agg["mn"])
        ld = agg.get("ld")
        if ld and (lead is None or ld < lead):
            lead = ld
        for deal_id, key in (agg.get("dc") or {}).items():
            if deal_id not in created or key < created[deal_id]:
                created[deal_id] = key
    recent.sort(key=lambda kv: kv[0])
    omitted: dict[str, int] = {}
    if len(attributes) > MAX_ATTRIBUTES:
        ranked = sorted(attributes, key=lambda n: (n in _ALWAYS_SHOWN, attributes[n][0]), reverse=True)
        omitted["attributes"] = len(ranked) - MAX_ATTRIBUTES
        attributes = {n: attributes[n] for n in ranked[:MAX_ATTRIBUTES]}
    views = {name: _capped_value(orjson.loads(claim[1])) for name, claim in attributes.items()}
    name = views.get("name")
    shown_deals = sorted(deals)
    if len(deals) > MAX_DEALS:
        omitted["deals"] = len(deals) - MAX_DEALS
        shown_deals = sorted(sorted(deals, key=lambda d: deals[d][0], reverse=True)[:MAX_DEALS])
    interests = {"projects": _counted(projects, "projects", omitted), "pages": _counted(pages, "pages", omitted)}
    paths = _Path(steps, marketing, policy)
    converted = min((k for k in (lead, *created.values()) if k), default=None)
    out = {
        "display_name": name["value"] if name is not None and isinstance(name["value"], str) else None,
        "attributes": {k: views[k] for k in sorted(views)},
        "interests": interests,
        "first_touch": orjson.loads(first[1]) if first else None,
        "last_touch": orjson.loads(last[1]) if last else None,
        "recent_touches": [orjson.loads(v) for _, v in reversed(recent[-keep:] if keep else [])],
        "touch_counts": dict(sorted(counts.items())),
        "deals": {d: _deal(orjson.loads(deals[d][1]), created.get(d), paths, policy) for d in shown_deals},
        "lead_score": score,
        "attribution": {"lead_at": _key_time(converted), **paths.credits(converted)},
    }
    if omitted:
        out["omitted"] = omitted
    return out


def _capped_value(view: dict[str, Any]) -> dict[str, Any]:
    value = view.get("value")
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        view["value"] = value[:MAX_VALUE_CHARS]
        view["truncated"] = True
    return view


#: What :func:`fit` gives up, in order, to bring a profile under a byte budget: detail first, identity never.
_SHEDDING = (
    ("recent_touches", 5),
    ("pages", 10),
    ("projects", 10),
    ("deal_attribution", 0),
    ("recent_touches", 0),
    ("attributes", 0),
)


def _size(value: Any) -> int:
    return len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


def fit(profile: dict[str, Any], budget: int, overhead: int = 0) -> dict[str, Any] | None:
    """The profile cut to serialize within ``budget - overhead`` bytes, or None when even its core does not fit.

    Each step drops detail a subscriber can recover from the touches (recent touches, interests, the
    attribution tables of deals, then the largest attribute values, keeping ``name``), and records what it
    dropped under ``omitted``. Identifiers, counts, deals and the person's own attribution always stay.
    """
    limit = budget - overhead
    if _size(profile) <= limit:
        return profile
    out = dict(profile)
    omitted = dict(out.get("omitted") or {})
    for step, keep in _SHEDDING:
        if step == "recent_touches":
            dropped = len(out["recent_touches"]) - keep
            if dropped > 0:
                out["recent_touches"] = out["recent_touches"][:keep]
                omitted["recent_touches"] = omitted.get("recent_touches", 0) + dropped
        elif step in ("pages", "projects"):
            entries = out["interests"][step]
            if len(entries) > keep:
                out["interests"] = {**out["interests"], step: dict(list(entries.items())[:keep])}
                omitted[step] = omitted.get(step, 0) + len(entries) - keep
        elif step == "deal_attribution":
            out["deals"] = {d: {**deal, "attribution": None} for d, deal in out["deals"].items()}
            omitted["deal_attribution"] = len(out["deals"])
        else:
            attributes = dict(out["attributes"])
            by_size = sorted(attributes, key=lambda n: _size(attributes[n]), reverse=True)
            out["omitted"] = omitted
            size = _size(out)
            for name in by_size:
                if size <= limit - 64:  # the estimate is within a few bytes per attribute
                    break
                if name in _ALWAYS_SHOWN:
                    continue
                size -= _size(attributes.pop(name)) + len(name) + 4
                omitted["attributes"] = omitted.get("attributes", 0) + 1
            out["attributes"] = attributes
        out["omitted"] = omitted
        if _size(out) <= limit:
            return out
    return None


def _key_time(key: str | None) -> str | None:
    """The time of a key in :func:`~identity.touch.key_text` form, as ISO-8601 UTC."""
    if key is None:
        return None
    return (_EPOCH + timedelta(microseconds=int(key[:KEY_TIME_DIGITS]))).isoformat()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Path:
    """A person's attribution path (merged from its identifiers' aggregates) and the credits it gives."""

    __slots__ = ("kept_all", "keys", "last_kept", "ranks", "steps")

    def __init__(self, steps: list[list[str]], total: int, policy: ResolutionPolicy) -> None:
        steps.sort(key=lambda step: step[0])
        del steps[policy.attribution_touches :]  # each identifier kept its earliest: so does the person
        self.steps: list[PathStep] = [(s[0], Channel(s[1], s[2], s[3])) for s in steps]
        self.keys = [s[0] for s in steps]
        self.kept_all = total <= len(steps)
        self.last_kept = steps[-1][0] if steps else ""
        self.ranks: ChannelRanks = policy.ranks

    def credits(self, until: str | None) -> dict[str, Any]:
        """Every model's credits for the touches up to ``until`` (a key text; None: every touch so far)."""
        n = len(self.keys) if until is None else bisect.bisect_right(self.keys, until)
        truncated = not self.kept_all and (until is None or until > self.last_kept)
        views = _model_views(tuple(channel for _, channel in self.steps[:n]), self.ranks)
        return {
            "touches": n,
            "truncated": truncated,
            "models": {model: [dict(row) for row in rows] for model, rows in views.items()},
        }


@functools.lru_cache(maxsize=8192)
def _model_views(channels: tuple[Channel, ...], ranks: ChannelRanks) -> dict[str, list[dict[str, Any]]]:
    """Every model's credit rows for one sequence of channels (memoized: the paths of returning people repeat
    in every update of their profile, and six models over up to 100 touches were a fifth of a worker's time).
    The caller copies the rows it hands out."""
    path = [(i, channel) for i, channel in enumerate(channels)]
    return {model: credits_view(credits) for model, credits in attribute_all(path, ranks).items()}


def _deal(deal: dict[str, Any], created: str | None, path: _Path, policy: ResolutionPolicy) -> dict[str, Any]:
    deal["status"] = policy.deal_status(deal["stage"])
    deal["created_at"] = _key_time(created)
    deal["attribution"] = path.credits(created) if created is not None else None
    return deal


def _insert(items: list[list[Any]], entry: list[Any]) -> None:
    """Insert ``entry`` into ``items``, ascending by their first element (a key text), after equal ones."""
    i = len(items)
    key = entry[0]
    while i > 0 and key < items[i - 1][0]:
        i -= 1
    items.insert(i, entry)


class Stored:
    """A golden aggregate held in the store-neutral form and folded in place: what a stored unit keeps.

    The same fold as :class:`Golden` (the contract tests hold their profiles equal), over plain data a
    store can write and read back, so a worker can load a person's aggregates, fold a batch into them and
    commit them again.
    """

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = (
            data if data is not None else {"a": {}, "c": {}, "pj": {}, "pg": {}, "r": [], "d": {}}
        )

    def add(
        self,
        touch: Touch,
        key: EventKey,
        trust: int,
        keep: int,
        *,
        points: int = 0,
        path_keep: int = 0,
        rules: ChannelRules | None = None,
    ) -> None:
        self.fold(contribution(touch, key, trust, points, rules), keep, path_keep)

    def fold(self, c: dict[str, Any], keep: int, path_keep: int) -> None:
        """Fold one contribution (see :func:`contribution`) in."""
        a = self.data
        k = c["k"]
        attributes = a["a"]
        for name, payload in c["attrs"].items():
            held = attributes.get(name)
            if held is None or held[0] < c["rank"]:
                attributes[name] = [c["rank"], payload]
        if "pts" in c:
            a["s"] = a.get("s", 0) + c["pts"]
        deal = c.get("deal")
        if deal is not None:
            deals = a["d"]
            held = deals.get(deal[0])
            if held is None or held[0] < k:
                deals[deal[0]] = [k, deal[1]]
            created = a.setdefault("dc", {})
            born = created.get(deal[0])
            if born is None or k < born:
                created[deal[0]] = k
        kind = c.get("type")
        if kind is None:
            return
        channel = c.get("ch")
        if channel is not None:
            a["mn"] = a.get("mn", 0) + 1
            path = a.setdefault("m", [])
            if len(path) < path_keep or (path and k < path[-1][0]):
                _insert(path, [k, *channel])
                del path[path_keep:]
            if "lead" in c and ("ld" not in a or k < a["ld"]):
                a["ld"] = k
        counts = a["c"]
        counts[kind] = counts.get(kind, 0) + 1
        for name, short in (("project", "pj"), ("page", "pg")):
            value = c.get(name)
            if value is not None:
                seen = a[short]
                seen[value] = seen.get(value, 0) + 1
        entry = [k, c["view"]]
        if "f" not in a or k < a["f"][0]:
            a["f"] = entry
        if "l" not in a or a["l"][0] < k:
            a["l"] = entry
        if keep > 0:
            recent = a["r"]
            _insert(recent, entry)
            del recent[: max(0, len(recent) - keep)]

    def serialize(self) -> dict[str, Any]:
        return self.data

    def last_key(self) -> EventKey | None:
        """The key of the newest contact folded in, if any."""
        last = self.data.get("l")
        if not last:
            return None
        micros, _, event_id = last[0].partition("|")
        return int(micros), event_id
