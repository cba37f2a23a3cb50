"""Prometheus metrics of the agent (``/metrics``), every name prefixed ``machinery_``.

Counters and histograms that need each occurrence (transitions, watcher runs and their
durations) are updated as things happen: :class:`AgentMetrics` is a sink on the event bus and the
node's watcher observer. Everything that is a current value (machine states, spool depth, broker
connection, load errors) is read from the agent when scraped, so it is never stale. Each agent
has its own registry, so several agents can share a process (tests).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from machinery import __version__
from machinery.core.clock import TICK_LATENESS
from machinery.core.notifications import MachineEvent, TransitionNotification

if TYPE_CHECKING:
    from machinery.agent.daemon import Agent

__all__ = ["AgentMetrics"]

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class AgentMetrics:
    """The agent's metrics registry and the hooks that feed it."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=True)
        self.transitions = Counter(
            "machinery_transitions",
            "State transitions, by machine, transition and states.",
            ["machine", "transition", "from_state", "to_state"],
            registry=self.registry,
        )
        self.watcher_runs = Counter(
            "machinery_watcher_runs",
            "Watcher runs or checks, by outcome (skipped ones included).",
            ["machine", "watcher", "type", "outcome"],
            registry=self.registry,
        )
        self.watcher_duration = Histogram(
            "machinery_watcher_run_duration_seconds",
            "How long timed watcher runs took (commands, downloads, checks).",
            ["machine", "watcher", "type"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "machinery_events",
            "Events produced (transitions and watcher states), by CloudEvent type.",
            ["type"],
            registry=self.registry,
        )
        self.control_requests = Counter(
            "machinery_control_requests",
            "Fleet control requests over NATS answered by this node, by verb and outcome "
            "(ok, not_matched, or the error code).",
            ["verb", "outcome"],
            registry=self.registry,
        )
        self.control_refusals = Counter(
            "machinery_control_refusals",
            "State changes over NATS refused, by reason (not_allowed, unsigned, untrusted, "
            "bad_signature, expired, replayed, busy).",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_Current(agent))
        # The agent's own memory, CPU and file descriptors (process_*), for leak alerts.
        ProcessCollector(registry=self.registry)

    # -- the hooks ----------------------------------------------------------------------------

    def notify(self, event: MachineEvent) -> None:
        """Event bus sink."""
        self.events.labels(event.protocol).inc()
        if isinstance(event, TransitionNotification):
            self.transitions.labels(
                event.machine, event.transition, event.from_state, event.to_state
            ).inc()

    def watcher_run(
        self, machine: str, watcher: str, watcher_type: str, outcome: str, duration: float | None
    ) -> None:
        """Node watcher observer: every recorded outcome."""
        self.watcher_runs.labels(machine, watcher, watcher_type, outcome).inc()
        if duration is not None:
            self.watcher_duration.labels(machine, watcher, watcher_type).observe(duration)

    def forget_machine(self, machine: str) -> None:
        """Drop the series of a removed machine so they do not linger forever."""
        for metric in (self.transitions, self.watcher_runs, self.watcher_duration):
            for labels in list(metric._metrics):  # prometheus_client offers no public iteration
                if labels and labels[0] == machine:
                    metric.remove(*labels)


class _Current(Collector):
    """Values read from the agent at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        info = InfoMetricFamily("machinery_build", "Version of machinery and Python.")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info

        state = GaugeMetricFamily(
            "machinery_machine_state",
            "1 for the state each machine is in now.",
            labels=["machine", "version", "state"],
        )
        status = GaugeMetricFamily(
            "machinery_machines", "Machine directories of the store, by status.", labels=["status"]
        )
        since = GaugeMetricFamily(
            "machinery_machine_state_since_seconds",
            "Unix time each machine entered its current state.",
            labels=["machine"],
        )
        delay = CounterMetricFamily(
            "machinery_rate_limit_delay_seconds",
            "Time machines waited in the fast-transition rate limiter.",
            labels=["machine"],
        )
        counts: dict[str, int] = {}
        store = agent.store
        for entry in store.sorted_entries() if store is not None else []:
            counts[entry.status.value] = counts.get(entry.status.value, 0) + 1
            machine = entry.machine
            if machine is None:
                continue
            state.add_metric([machine.name, machine.version, machine.state], 1)
            since.add_metric([machine.name], machine.state_entered)
            delay.add_metric([machine.name], machine.rate_limiter.total_delay)
        for name, count in sorted(counts.items()):
            status.add_metric([name], count)
        yield state
        yield status
        yield since
        yield delay

        if store is not None:
            yield _counter(
                "machinery_machine_load_errors", "Manifests that failed to load.", store.load_errors
            )
            yield _counter(
                "machinery_store_reloads",
                "Machines restarted because their manifest changed.",
                store.reloads,
            )
            yield _counter("machinery_machine_loads", "Machines loaded.", store.loads)

        runner = agent.node.runner if agent.node is not None else None
        yield _counter(
            "machinery_exec_timeouts",
            "Commands killed for running past their timeout.",
            getattr(runner, "timeouts", 0),
        )
        yield _counter(
            "machinery_exec_kills",
            "Command process groups killed (timeouts and stops).",
            getattr(runner, "kills", 0),
        )

        writer = agent.writer
        yield _counter(
            "machinery_state_write_errors",
            "State records that could not be written.",
            writer.errors if writer else 0,
        )

        spool = agent.spool
        yield _gauge(
            "machinery_spool_depth",
            "Events waiting to be published to NATS.",
            spool.depth if spool else 0,
        )
        yield _counter(
            "machinery_spool_dropped",
            "Events dropped because the spool was full.",
            spool.dropped if spool else 0,
        )
        publisher = agent.publisher
        yield _counter(
            "machinery_events_published",
            "Events published to NATS.",
            publisher.published if publisher else 0,
        )
        broker = agent.broker
        yield _gauge(
            "machinery_nats_connected",
            "1 while connected to NATS (0 also when not configured).",
            1 if broker.is_connected else 0,
        )
        yield _counter(
            "machinery_nats_disconnects", "Times the NATS connection was lost.", broker.disconnects
        )
        yield _gauge(
            "machinery_event_subscribers", "Live event-stream clients.", agent.bus.subscriber_count
        )
        yield _gauge("machinery_start_time_seconds", "Unix time the agent started.", agent.started)
        lateness = HistogramMetricFamily(
            "machinery_tick_lateness_seconds",
            "How late watcher interval ticks fired (event-loop scheduling jitter).",
        )
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*TICK_LATENESS.BOUNDS, float("inf")), TICK_LATENESS.buckets, strict=True
        ):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        lateness.add_metric([], buckets, TICK_LATENESS.total)
        yield lateness


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
