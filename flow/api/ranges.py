"""The period of a report, from a request's ``start`` and ``end``.

Times without a zone are UTC; ``start`` is inclusive and ``end`` exclusive; the default
is the last 30 days up to now; a period may span at most ``MAX_REPORT_DAYS``. Every
refusal is a 422 ``validation_error`` naming the query parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flow.api.errors import ApiError
from flow.config import MAX_REPORT_DAYS

DEFAULT_RANGE = timedelta(days=30)
MAX_RANGE = timedelta(days=MAX_REPORT_DAYS)


def invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "validation_error",
        message,
        details=[{"loc": ["query", field], "msg": message, "type": "value_error"}],
    )


def utc(value: datetime, field: str) -> datetime:
    """The time in UTC; a time that has no UTC equivalent (year 1 at +14:00) is a 422."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise invalid(field, f"{field} is out of range once converted to UTC") from None


def report_range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """[start, end) in UTC, checked: start before end, at most ``MAX_REPORT_DAYS``."""
    end_at = utc(end, "end") if end else datetime.now(UTC)
    try:
        start_at = utc(start, "start") if start else end_at - DEFAULT_RANGE
    except OverflowError:  # end near year 1: the default start would be before it
        raise invalid("end", "end is too early for the default range") from None
    if start_at >= end_at:
        raise invalid("start", "start must be before end")
    if end_at - start_at > MAX_RANGE:
        raise invalid("end", f"the range may span at most {MAX_RANGE.days} days")
    return start_at, end_at
