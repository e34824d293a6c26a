"""What a send looked like from the limiter's side: its answers, utilisation, refusals.

Every peer logs one line per answer: a time in seconds (monotonic for the Flask peer, nginx's
``$msec`` epoch for nginx; only differences are used) and the HTTP status.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

#: statuses that mean "the limiter refused this request"
REFUSALS = frozenset({429, 503})
#: seconds at the start of a send given to the scheduler to converge before utilisation counts
SETTLE = 5.0


@dataclass(frozen=True, slots=True)
class Answer:
    t: float  # seconds (monotonic or epoch; one log uses one clock)
    status: int
    recipients: int = 0  # recipients in the request, when the peer counts them


@dataclass(frozen=True, slots=True)
class Figures:
    """One send, measured at the limiter."""

    requests: int
    accepted: int
    refused: int
    duration: float  # first answer to last, seconds
    span: float  # the measured part: from SETTLE after the first answer to the last acceptance
    utilisation: float  # accepted per second over ``span`` / the limiter's true rate
    refusal_share: float  # refused / requests, over the whole send

    def describe(self) -> str:
        return (
            f"utilisation {self.utilisation:.3f} over the last {self.span:.1f} s, "
            f"refused {self.refused}/{self.requests} ({self.refusal_share:.1%}), "
            f"accepted {self.accepted}, duration {self.duration:.1f} s"
        )


def read_jsonl_log(path: Path) -> list[Answer]:
    """The Flask peer's log: ``{"t": monotonic, "wall": epoch, "status": 200, "n": 10}``."""
    answers = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            row = orjson.loads(line)
            answers.append(Answer(float(row["t"]), int(row["status"]), int(row.get("n", 0))))
    return sorted(answers, key=lambda a: a.t)


def read_nginx_log(path: Path) -> list[Answer]:
    """An nginx access log in the format ``$msec $status`` (one answer a line)."""
    answers = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2:
            answers.append(Answer(float(fields[0]), int(fields[1])))
    return sorted(answers, key=lambda a: a.t)


def accepted_rate(times: Sequence[float], start: float, end: float) -> float:
    """Acceptances per second in the half-open span ``[start, end)``."""
    if end <= start:
        return 0.0
    return sum(1 for t in times if start <= t < end) / (end - start)


def measure(
    answers: Sequence[Answer],
    rate: float,
    *,
    settle: float = SETTLE,
    refusals: Iterable[int] = REFUSALS,
) -> Figures:
    """Figures of one send against a limiter whose true rate is ``rate`` requests/s.

    Utilisation counts the accepted (2xx) answers from ``settle`` seconds after the first
    answer up to the last acceptance, over that span times ``rate``; the refusal share counts
    the whole send.
    """
    refused_statuses = frozenset(refusals)
    if not answers:
        return Figures(0, 0, 0, 0.0, 0.0, 0.0, 0.0)
    ok = [a.t for a in answers if 200 <= a.status < 300]
    refused = sum(1 for a in answers if a.status in refused_statuses)
    start = answers[0].t + settle
    end = ok[-1] if ok else start
    span = max(0.0, end - start)
    return Figures(
        requests=len(answers),
        accepted=len(ok),
        refused=refused,
        duration=answers[-1].t - answers[0].t,
        span=span,
        utilisation=accepted_rate(ok, start, end) / rate,
        refusal_share=refused / len(answers),
    )


def most_in_any_span(times: Iterable[float], span: float) -> int:
    """The largest number of events in any half-open interval of length ``span``."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - span:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
