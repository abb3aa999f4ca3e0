"""The service-cycle matrix, as pure rules: a cycle's moments of truth in
order, each with the requirements the customer has there, and the scales
those requirements are scored on.

* A cycle has a free name (at most 200 characters) and versions; a moment
  has a stable key (its ``touchpoint``, what contacts and cases name) and a
  weight 1-5; a requirement has an id stable within the cycle, its text, the
  channels it applies to (none: every channel), a survey scale and a weight.
* A requirement is a survey question (:func:`question_id`, the same in the
  service and in the migration that made the first versions) and a
  mystery-shopping criterion: a ``yes_no`` requirement is scored yes/no,
  every other one 1-5 (:func:`criterion_scale`).
* Every score is also read on 0-1 (:func:`normalise`: the scale's lowest
  answer is 0, its highest 1), so a CSAT answer, an NPS answer, a yes/no
  and a 1-5 criterion compare.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from crm_contracts.vocabulary import CONTACT_CHANNELS, SURVEY_SCALES
from crm_runtime.errors import InvalidArgument

#: A moment's key and a requirement's id.
KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_NAME = 200
MAX_WEIGHT = 5
#: The most requirements of one cycle (its periodic survey asks them all in
#: one event).
MAX_REQUIREMENTS = 200
#: Criterion scales of mystery shopping.
YES_NO = "yes_no"
ONE_TO_FIVE = "one_to_five"
#: Score ranges of every scale (lowest, highest).
RANGES: Mapping[str, tuple[int, int]] = {
    "csat": (1, 5), "nps": (0, 10), YES_NO: (0, 1), ONE_TO_FIVE: (1, 5)}

_QUESTIONS = {"csat": "How satisfied were you with: {}?",
              "nps": "After this, how likely are you to recommend us ({})?",
              YES_NO: "Was this so: {}?"}


@dataclass(frozen=True)
class Requirement:
    requirement_id: str
    text: str
    channels: tuple[str, ...] = ()
    scale: str = "csat"
    weight: int = 1
    question: str = ""
    question_id: str = ""

    def applies_to(self, channel: str) -> bool:
        """Whether the requirement applies on ``channel`` ('' : any)."""
        return not self.channels or not channel or channel in self.channels


@dataclass(frozen=True)
class Moment:
    touchpoint: str
    name: str
    weight: int = 1
    requirements: tuple[Requirement, ...] = ()


@dataclass(frozen=True)
class Cycle:
    name: str
    version: int
    moments: tuple[Moment, ...]

    def moment(self, touchpoint: str) -> Moment | None:
        return next((m for m in self.moments if m.touchpoint == touchpoint), None)

    def requirement(self, requirement_id: str) -> tuple[Moment, Requirement] | None:
        """The requirement of that id and its moment (None: not in this version)."""
        for m in self.moments:
            for r in m.requirements:
                if r.requirement_id == requirement_id:
                    return m, r
        return None


def question_id(cycle: str, version: int, requirement_id: str) -> str:
    """The id of a requirement's survey question in one version of a cycle."""
    return str(uuid.UUID(hashlib.md5(f"{cycle}\x1f{version}\x1f{requirement_id}".encode(),
                                     usedforsecurity=False).hexdigest()))


def criterion_scale(scale: str) -> str:
    """The mystery-shopping scale of a requirement of that survey scale."""
    return YES_NO if scale == YES_NO else ONE_TO_FIVE


def check_score(scale: str, score: int, field: str) -> int:
    """``score`` if it is on ``scale``, else InvalidArgument naming ``field``."""
    low, high = RANGES[scale]
    if not low <= score <= high:
        raise InvalidArgument(field, f"{score} is not on the {scale} scale ({low}-{high})")
    return score


def normalise(scale: str, score: float) -> float:
    """A score on ``scale`` read on 0-1 (the lowest answer 0, the highest 1)."""
    low, high = RANGES[scale]
    return (score - low) / (high - low)


# --- defining a cycle -------------------------------------------------------

def _key(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "required")
    if not KEY.fullmatch(value):
        raise InvalidArgument(field, f"{value[:40]!r} must be lowercase letters, digits, '_' "
                                     "or '-', starting with a letter or digit, at most 63")
    return value


def _weight(value: int, field: str) -> int:
    if value == 0:
        return 1
    if not 1 <= value <= MAX_WEIGHT:
        raise InvalidArgument(field, f"must be 1-{MAX_WEIGHT} (0: the default 1), got {value}")
    return value


def define(name: str, version: int, moments: Sequence[Mapping[str, Any]]) -> Cycle:
    """Check a cycle's definition and give it its version: moment keys and
    requirement ids unique in the cycle, channels and scales known, weights
    1-5, questions defaulting from the text and the scale. ``moments`` are
    mappings of :class:`Moment`'s fields with ``requirements`` mappings of
    :class:`Requirement`'s; errors name the field (``moments[1].touchpoint``)."""
    name = name.strip()
    if not name:
        raise InvalidArgument("name", "required")
    if len(name) > MAX_NAME:
        raise InvalidArgument("name", f"at most {MAX_NAME} characters")
    if not moments:
        raise InvalidArgument("moments", "at least one moment of truth")
    keys: set[str] = set()
    ids: set[str] = set()
    out = []
    for i, m in enumerate(moments):
        at = f"moments[{i}]"
        key = _key(m.get("touchpoint", ""), f"{at}.touchpoint")
        if key in keys:
            raise InvalidArgument(f"{at}.touchpoint", f"{key!r} appears twice in the cycle")
        keys.add(key)
        requirements = []
        for j, r in enumerate(m.get("requirements", ())):
            rat = f"{at}.requirements[{j}]"
            if len(ids) == MAX_REQUIREMENTS:
                raise InvalidArgument(f"{at}.requirements", f"a cycle has at most "
                                                            f"{MAX_REQUIREMENTS} requirements")
            rid = _key(r.get("requirement_id", ""), f"{rat}.requirement_id")
            if rid in ids:
                raise InvalidArgument(f"{rat}.requirement_id", f"{rid!r} appears twice in the "
                                                               "cycle")
            ids.add(rid)
            text = r.get("text", "").strip()
            if not text:
                raise InvalidArgument(f"{rat}.text", "required")
            scale = (r.get("scale") or "csat").strip().lower()
            if scale not in SURVEY_SCALES:
                raise InvalidArgument(f"{rat}.scale", f"{scale!r} is not one of "
                                                      f"{list(SURVEY_SCALES)}")
            channels = []
            for k, c in enumerate(r.get("channels", ())):
                c = c.strip().lower()
                if c not in CONTACT_CHANNELS:
                    raise InvalidArgument(f"{rat}.channels[{k}]", f"{c[:40]!r} is not one of "
                                                                  f"{list(CONTACT_CHANNELS)}")
                if c not in channels:
                    channels.append(c)
            requirements.append(Requirement(
                requirement_id=rid, text=text, channels=tuple(channels), scale=scale,
                weight=_weight(r.get("weight", 0), f"{rat}.weight"),
                question=(r.get("question") or "").strip() or _QUESTIONS[scale].format(text),
                question_id=question_id(name, version, rid)))
        out.append(Moment(touchpoint=key, name=(m.get("name") or "").strip() or key,
                          weight=_weight(m.get("weight", 0), f"{at}.weight"),
                          requirements=tuple(requirements)))
    return Cycle(name=name, version=version, moments=tuple(out))


def to_json(cycle: Cycle) -> list[dict[str, Any]]:
    """The moments as stored (``service_cycle_versions.moments``)."""
    return [{**asdict(m), "requirements": [{**asdict(r), "channels": list(r.channels)}
                                           for r in m.requirements]}
            for m in cycle.moments]


def from_json(name: str, version: int, moments: Iterable[Mapping[str, Any]]) -> Cycle:
    """A stored version back (the reverse of :func:`to_json`)."""
    return Cycle(name=name, version=version, moments=tuple(
        Moment(touchpoint=m["touchpoint"], name=m["name"], weight=m["weight"],
               requirements=tuple(Requirement(
                   requirement_id=r["requirement_id"], text=r["text"],
                   channels=tuple(r["channels"]), scale=r["scale"], weight=r["weight"],
                   question=r["question"], question_id=r["question_id"])
                   for r in m["requirements"]))
        for m in moments))


def same_matrix(a: Cycle, b: Cycle) -> bool:
    """Whether two versions define the same matrix (question ids aside)."""
    def strip(c: Cycle) -> list[dict[str, Any]]:
        return [{**m, "requirements": [{**r, "question_id": ""} for r in m["requirements"]]}
                for m in to_json(c)]
    return strip(a) == strip(b)
