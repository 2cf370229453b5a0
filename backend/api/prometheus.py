"""GET /metrics: the swarm monitor's figures in Prometheus' text exposition format (version 0.0.4).

One sample per monitored run (label `run`, the slug): peers online, samples/s, epoch, loss, ETA,
credited samples, and the monitor's own health (lag since its last successful poll, polls, failed
polls, invalid records dropped, flagged claims, poll duration). Written by hand: `# HELP` and
`# TYPE` lines, escaped label values, `NaN` / `+Inf` where a value is unknown.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from backend.api.deps import SessionDep
from backend.models import MonitorStatus
from backend.services import swarm as swarm_service

router = APIRouter(tags=["monitoring"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[dict[str, str], float]


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class Exposition:
    """Builds a text exposition: each metric's HELP and TYPE lines, then its samples."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def add(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        if kind not in ("gauge", "counter"):
            raise ValueError(f"kind must be gauge or counter, not {kind!r}")
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{key}="{escape_label_value(text)}"' for key, text in labels.items())
            self._lines.append(
                f"{name}{{{rendered}}} {format_value(value)}" if rendered else f"{name} {format_value(value)}"
            )

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _lag(status: MonitorStatus, now: float) -> float:
    return now - status.last_success_at if status.last_success_at is not None else math.inf


# name, type, help, value of one run's status at `now`
RUN_METRICS: list[tuple[str, str, str, Callable[[MonitorStatus, float], float]]] = [
    (
        "hivemind_run_peers_online",
        "gauge",
        "Peers of the run the monitor saw online.",
        lambda s, _: s.peers_online,
    ),
    (
        "hivemind_run_samples_per_second",
        "gauge",
        "The swarm's samples per second.",
        lambda s, _: s.samples_per_second,
    ),
    ("hivemind_run_epoch", "gauge", "The swarm's current epoch.", lambda s, _: s.epoch),
    (
        "hivemind_run_loss",
        "gauge",
        "Mean loss of the peers at the current epoch.",
        lambda s, _: _or_nan(s.loss),
    ),
    (
        "hivemind_run_eta_seconds",
        "gauge",
        "Seconds to the next epoch (NaN: nobody trains).",
        lambda s, _: _or_nan(s.eta_s),
    ),
    (
        "hivemind_run_samples_total",
        "counter",
        "Samples the swarm trained, as counted.",
        lambda s, _: s.total_samples,
    ),
    (
        "hivemind_monitor_lag_seconds",
        "gauge",
        "Seconds since the last successful poll (+Inf: none yet).",
        _lag,
    ),
    (
        "hivemind_monitor_poll_duration_seconds",
        "gauge",
        "How long the last poll read the swarm.",
        lambda s, _: s.poll_duration_s,
    ),
    ("hivemind_monitor_polls_total", "counter", "Successful polls of the run.", lambda s, _: s.polls),
    ("hivemind_monitor_poll_errors_total", "counter", "Failed polls of the run.", lambda s, _: s.errors),
    (
        "hivemind_monitor_invalid_records_total",
        "counter",
        "Records dropped as invalid (bad signature, schema, or shape), each time a poll met one.",
        lambda s, _: s.invalid_records,
    ),
    (
        "hivemind_monitor_flagged_claims_total",
        "counter",
        "Claims that failed the sanity checks.",
        lambda s, _: s.flagged_claims,
    ),
]


@router.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {CONTENT_TYPE: {}}}})
def prometheus_metrics(session: SessionDep) -> PlainTextResponse:
    """Every monitored run's figures for Prometheus to scrape."""
    from backend import __version__

    now = time.time()
    runs = swarm_service.monitored_runs(session)
    out = Exposition()
    out.add("hivemind_site_info", "gauge", "The site's version.", [({"version": __version__}, 1)])
    for name, kind, help_text, value in RUN_METRICS:
        out.add(
            name, kind, help_text, [({"run": run.slug}, float(value(status, now))) for run, status in runs]
        )
    return PlainTextResponse(out.text(), media_type=CONTENT_TYPE)
