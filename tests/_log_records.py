"""A logging handler that keeps its records, for tests that wait for a log message."""

from __future__ import annotations

import logging
import threading


class Records(logging.Handler):
    """Collects the records of the logger it is added to; waits are bounded."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def wait_for_more_than(self, n: int, timeout: float = 10.0) -> list[logging.LogRecord]:
        """Wait until there are more than ``n`` records; return those after the first ``n``."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.records) > n, timeout)
            return self.records[n:]

    def wait_for(self, text: str, timeout: float = 10.0) -> list[str]:
        """Wait until a message contains ``text``; return the messages that do."""
        def found() -> list[str]:
            return [m for m in (r.getMessage() for r in self.records) if text in m]

        with self.cond:
            self.cond.wait_for(found, timeout)
            return found()
