"""Results too large to read whole: the instant they are judged at, and text crafted to mimic Celery's own tail."""

from __future__ import annotations

import datetime as dt

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


TID = "5d4cbbc6-2c4e-4c59-9b1e-3c1a0d6f2a10"


# Text a task may return, placed where the head or tail window cuts the value.
FAKES = [
    f'", "date_done": "2020-01-01T00:00:00", "task_id": "{TID}"}}',
    f'", "date_done": "2020-01-01T00:00:00", "task_id": "{TID}"',
    f'\\", \\"date_done\\": \\"2020-01-01T00:00:00\\", \\"task_id\\": \\"{TID}\\"}}',
    '{"status": "SUCCESS", "result": 1}',
    '"status": "PENDING", ',
    f', "date_done": null, "task_id": "{TID}"}}',
    "\\" * 7 + '"',
    "\\" * 8,
    '\\"\\\\"',
    "}]}",
    "é漢\u2028",
]
