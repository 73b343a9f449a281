"""The ledger against a vendor's figures: one line per day, model and unit, each
difference diagnosed.

Models are matched by family: OpenAI names the dated snapshot it served
(``gpt-4o-mini-2024-07-18``), the ledger what was asked for (``gpt-4o-mini``); both
lose a trailing ``-YYYY-MM-DD`` to meet (and case), and each line shows both names.
Kinds meet endpoints: for OpenAI ``llm`` events are completions, ``tts`` speeches, ``stt``
transcriptions, one event one request; for Deepgram ``stt`` is ``listen`` and ``tts``
``speak``, and a request is a call's connection (Deepgram counts a streamed session as
one request, the ledger holds an event per report): the ledger's requests are its
calls per day and model.

Tolerance: counts (requests, tokens, characters) must be equal; seconds may differ by
:attr:`Tolerance.seconds_per_request` per request, because OpenAI counts whole seconds
and Flow measures the audio; cost may differ by :attr:`Tolerance.cost_usd` per day and
model (the vendor's costs are rounded and lag).

Diagnosis of a line that differs:

- ``coverage``: the request counts differ: the vendor served requests the ledger lacks
  (another app in the same project, usage Flow missed), or the ledger holds requests the
  vendor does not report. Every differing line of that day and model says so.
- ``units``: the same requests, counted differently (tokens, characters, seconds).
- ``rate``: the same counts, a different cost (a price that changed, a wrong row, an
  unpriced event).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from flow.reconcile.openai import UNIT_FIELDS, Endpoint, VendorUsage

DATED_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")
# Which of a vendor's endpoints serves each kind of usage event.
ENDPOINTS_OF_KIND = {
    "openai": {
        "llm": Endpoint.COMPLETIONS,
        "tts": Endpoint.SPEECHES,
        "stt": Endpoint.TRANSCRIPTIONS,
    },
    "deepgram": {"stt": Endpoint.LISTEN, "tts": Endpoint.SPEAK},
}
# A vendor that streams counts one request per call's connection, not per report.
REQUESTS_ARE_CALLS = {"deepgram"}
# The ledger's column behind each unit (``usage_reconcile_daily``'s names).
LEDGER_FIELDS = {
    "requests": "requests",
    "input_tokens": "input_tokens",
    "cached_tokens": "cache_read_tokens",
    "output_tokens": "output_tokens",
    "input_audio_tokens": "input_audio_tokens",
    "output_audio_tokens": "output_audio_tokens",
    "characters": "characters",
    "seconds": "audio_seconds",
}
COSTS = "costs"
COST_UNIT = "cost_usd"


def plain(value: Decimal | None) -> str | None:
    """A figure as people write it: no exponent, no trailing zeros (``0.00435``, ``51``)."""
    if value is None:
        return None
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def family(model: str) -> str:
    """The name a ledger model and a vendor snapshot share: no trailing date."""
    return DATED_SNAPSHOT.sub("", model.strip().lower())


class Diagnosis(StrEnum):
    OK = "ok"
    COVERAGE = "coverage"
    UNITS = "units"
    RATE = "rate"


@dataclass(frozen=True)
class Tolerance:
    """How far apart two figures may be and still agree.

    Parameters:
        cost_usd: per day and model.
        seconds_per_request: transcribed seconds, per request.
    """

    cost_usd: Decimal = Decimal("0.01")
    seconds_per_request: Decimal = Decimal(1)

    def describe(self) -> str:
        return (
            f"counts exact; seconds within {self.seconds_per_request} s per request (OpenAI "
            f"counts whole seconds, Deepgram the audio streamed); cost within "
            f"${self.cost_usd} per day and model"
        )

    def to_json(self) -> dict[str, str]:
        return {
            "counts": "exact",
            "seconds_per_request": str(self.seconds_per_request),
            "cost_usd": str(self.cost_usd),
        }


@dataclass
class Line:
    """One day, model and unit: the ledger's figure, the vendor's (``None`` when it does
    not report the unit) and the diagnosis."""

    day: str
    model: str
    endpoint: str
    unit: str
    ledger_models: list[str]
    vendor_models: list[str]
    ledger: Decimal
    vendor: Decimal | None
    diagnosis: Diagnosis = Diagnosis.OK

    @property
    def difference(self) -> Decimal | None:
        return None if self.vendor is None else self.ledger - self.vendor

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "model": self.model,
            "ledger_models": self.ledger_models,
            "vendor_models": self.vendor_models,
            "endpoint": self.endpoint,
            "unit": self.unit,
            "ledger": plain(self.ledger),
            "vendor": plain(self.vendor),
            "difference": plain(self.difference),
            "diagnosis": self.diagnosis.value,
        }


@dataclass
class _Side:
    models: set[str] = field(default_factory=set)
    figures: dict[str, Decimal] = field(default_factory=dict)

    def add(self, unit: str, value: Decimal) -> None:
        self.figures[unit] = self.figures.get(unit, Decimal(0)) + value


def reconcile(
    ledger_rows: Iterable[dict[str, Any]],
    vendor: VendorUsage,
    tolerance: Tolerance,
    provider: str = "openai",
) -> list[Line]:
    """Every day, model and unit either side reports, in order, diagnosed."""
    ledger: dict[tuple[str, Endpoint, str], _Side] = {}
    ledger_cost: dict[tuple[str, str], _Side] = {}
    fields = dict(LEDGER_FIELDS)
    if provider in REQUESTS_ARE_CALLS:
        fields["requests"] = "calls"
    for row in ledger_rows:
        endpoint = ENDPOINTS_OF_KIND[provider].get(str(row["kind"]))
        if endpoint is None:
            continue
        day, name = str(row["day"]), str(row["model"])
        side = ledger.setdefault((day, endpoint, family(name)), _Side())
        side.models.add(name)
        for unit in UNIT_FIELDS[endpoint]:
            side.add(unit, Decimal(str(row[fields[unit]])))
        cost = ledger_cost.setdefault((day, family(name)), _Side())
        cost.models.add(name)
        cost.add(COST_UNIT, Decimal(str(row["cost_usd"])))
    theirs: dict[tuple[str, Endpoint, str], _Side] = {}
    for (day, endpoint, name), figures in vendor.usage.items():
        side = theirs.setdefault((day, endpoint, family(name)), _Side())
        side.models.add(name)
        for unit, value in figures.items():
            side.add(unit, value)

    lines: list[Line] = []
    worst: dict[tuple[str, str], Diagnosis] = {}
    for key in sorted(
        set(ledger) | set(theirs), key=lambda k: (k[0], k[2], list(Endpoint).index(k[1]))
    ):
        day, endpoint, model = key
        ours, other = ledger.get(key, _Side()), theirs.get(key)
        group = _group(day, endpoint, model, ours, other, tolerance)
        lines += group
        for line in group:  # what explains a cost difference: coverage, else units
            if line.diagnosis == Diagnosis.COVERAGE or (
                line.diagnosis == Diagnosis.UNITS and (day, model) not in worst
            ):
                worst[(day, model)] = line.diagnosis
    if vendor.has_costs:
        both = {(d, m) for d, _, m in ledger} & {(d, m) for d, _, m in theirs}
        lines += _costs(vendor, ledger_cost, worst, both, tolerance)
    lines.sort(key=lambda line: (line.day, line.model))
    return lines


def _group(
    day: str,
    endpoint: Endpoint,
    model: str,
    ours: _Side,
    other: _Side | None,
    tolerance: Tolerance,
) -> list[Line]:
    units = list(UNIT_FIELDS[endpoint])
    mine = {unit: ours.figures.get(unit, Decimal(0)) for unit in units}
    # A vendor that reports nothing for this day and model served none of it.
    theirs: dict[str, Decimal | None] = (
        {unit: other.figures.get(unit) for unit in units}
        if other is not None
        else dict.fromkeys(units, Decimal(0))
    )
    requests = max(mine["requests"], theirs["requests"] or Decimal(0), Decimal(1))

    def agrees(unit: str) -> bool:
        vendor_figure = theirs[unit]
        if vendor_figure is None:
            return True
        if unit == "seconds":
            return abs(mine[unit] - vendor_figure) <= tolerance.seconds_per_request * requests
        return mine[unit] == vendor_figure

    differs = Diagnosis.COVERAGE if not agrees("requests") else Diagnosis.UNITS
    vendor_models = sorted(other.models) if other else []
    return [
        Line(
            day,
            model,
            endpoint.value,
            unit,
            sorted(ours.models),
            vendor_models,
            mine[unit],
            theirs[unit],
            Diagnosis.OK if agrees(unit) else differs,
        )
        for unit in units
    ]


def _costs(
    vendor: VendorUsage,
    ledger_cost: dict[tuple[str, str], _Side],
    worst: dict[tuple[str, str], Diagnosis],
    both: set[tuple[str, str]],
    tolerance: Tolerance,
) -> list[Line]:
    """Cost per day and model. A difference is the coverage or units difference of the
    same day and model when there is one; a cost for usage only one side reports (a
    line item Flow never meters) is coverage; else it is the rate."""
    theirs: dict[tuple[str, str], _Side] = {}
    for (day, name), value in vendor.costs.items():
        side = theirs.setdefault((day, family(name)), _Side())
        side.models.add(name)
        side.add(COST_UNIT, value)
    lines = []
    for key in sorted(set(theirs) | set(ledger_cost)):
        ours, other = ledger_cost.get(key, _Side()), theirs.get(key, _Side())
        mine = ours.figures.get(COST_UNIT, Decimal(0))
        vendor_figure = other.figures.get(COST_UNIT, Decimal(0))
        if key not in theirs and mine == 0:
            continue  # nothing billed on either side
        agrees = abs(mine - vendor_figure) <= tolerance.cost_usd
        explained = worst.get(key) or (Diagnosis.RATE if key in both else Diagnosis.COVERAGE)
        diagnosis = Diagnosis.OK if agrees else explained
        lines.append(
            Line(
                key[0],
                key[1],
                COSTS,
                COST_UNIT,
                sorted(ours.models),
                sorted(other.models),
                mine,
                vendor_figure,
                diagnosis,
            )
        )
    return lines
