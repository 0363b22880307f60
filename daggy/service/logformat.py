# -*- test-case-name: tests.unit.test_cli -*-
"""The format of daggyd's own log (startup, warnings, errors; not the run events).

``text`` (the default) is twisted.logger's classic one line per event.  ``json``
(``--log-format json``, or ``log-format: json`` in the config) is one JSON object per line,
for log shippers::

    {"time": "2025-01-02T03:04:05.678Z", "level": "warn", "namespace": "daggy.runner.RunManager",
     "message": "internal error in run 7", "run_id": 7, "task": "pull"}

Every field of the event is kept (``run_id`` and ``task`` name the run and task an event
is about), so a shipper can filter by them without parsing the message; a failure's
traceback is in ``failure``.  twisted.logger's own ``eventAsJSON`` is not used: it writes
the level as an object, no rendered message and no traceback text.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)

#: The values of ``--log-format`` and of the config key ``log-format``.
LOG_FORMATS = ("text", "json")

#: Keys of events from the legacy twisted.python.log API (which sets ``message`` and
#: ``isError`` on every event), which repeat the message, the time or the failure.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "format", "time", "why", "failure",
                          "printed"})


def _iso_time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_as_json_line(event: dict[str, Any]) -> str:
    """One log event as a line of JSON (ending in a newline); never raises."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "level": getattr(level, "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    if event.get("log_system") is not None:
        record["system"] = event["log_system"]
    skipped = _LEGACY_KEYS if "isError" in event and "message" in event else ()
    for key, value in event.items():
        if not key.startswith("log_") and key not in skipped and key not in record:
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = repr(failure)
    try:
        return json.dumps(record, ensure_ascii=False, default=repr) + "\n"
    except (TypeError, ValueError):
        # A field JSON cannot hold (a dict with non-string keys, a cycle): shown as text.
        shown = {key: value if isinstance(value, (str, int, float, bool, type(None)))
                 else repr(value) for key, value in record.items()}
        return json.dumps(shown, ensure_ascii=False) + "\n"


def json_log_observer(stream: IO[str]) -> ILogObserver:
    """JSON lines on ``stream``, info level and above."""
    return FilteringLogObserver(
        FileLogObserver(stream, event_as_json_line),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
    )
