"""Dates in one place: month names, calendar arithmetic, and the one rule for timestamps that carry an offset."""

from __future__ import annotations

from datetime import datetime

_MONTH_NAMES = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
                "november", "december"]
MONTHS: dict[str, int] = {name: i + 1 for i, name in enumerate(_MONTH_NAMES)}
MONTHS.update({name[:3]: number for name, number in list(MONTHS.items())})
MONTHS["sept"] = 9


def add_months(moment: datetime, months: int) -> datetime:
    """The first day (00:00) of the month `months` after `moment`'s month."""
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    return moment.replace(year=year, month=month + 1, day=1, hour=0, minute=0, second=0, microsecond=0)


def naive_local(moment: datetime) -> datetime:
    """Records keep wall-clock times without an offset (MedAlign's XML, MIMIC, OMOP); a timestamp that carries
    one (FHIR's "-05:00", an ISO time anchor "+00:00") keeps its wall-clock reading and drops the offset, so
    every comparison is between naive datetimes of the same clock."""
    return moment.replace(tzinfo=None) if moment.tzinfo is not None else moment
