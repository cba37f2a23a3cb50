"""What an event-stream request selects (the agent's and the fleet's /events)."""

from __future__ import annotations

from machinery.core.notifications import TransitionNotification, WatcherStateNotification
from machinery.events.bus import event_query

TRANSITION = TransitionNotification(
    identity="web1",
    id="1",
    version="1.0.0",
    timestamp=1796040000,
    machine="lamp",
    transition="switch_on",
    from_state="off",
    to_state="on",
)
WATCHER = WatcherStateNotification(
    watcher_type="exec",
    payload={"identity": "web2", "machine": "lamp", "timestamp": 1796040000},
    text="web2 lamp#check ...",
)


def selected(**query: str) -> list[str]:
    accepts = event_query(**query)
    return [e.identity for e in (TRANSITION, WATCHER) if accepts(e)]


def test_each_parameter_narrows_and_none_selects_everything() -> None:
    assert selected() == ["web1", "web2"]
    assert selected(machine="lamp") == ["web1", "web2"]
    assert selected(machine="lam") == []  # exact, not a substring
    assert selected(identity="web2") == ["web2"]
    assert selected(kind="transitions") == ["web1"]
    assert selected(kind="watchers") == ["web2"]
    assert selected(protocol="io.choria.machine.watcher.exec.v1.state") == ["web2"]
    assert selected(protocol=TRANSITION.protocol, kind="watchers") == []
