"""`machinery watch --nats` as a process: it stops cleanly on SIGINT and SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.natsserver import NatsServer

MACHINERY = str(Path(sys.executable).parent / "machinery")


def ignore_sigint() -> None:
    # What a process started with `&` from a non-interactive shell (a CI script) inherits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_watch_stops_on_a_signal_even_when_started_in_the_background(
    nats_server: NatsServer, signum: signal.Signals
) -> None:
    watcher = subprocess.Popen(
        [MACHINERY, "watch", "--nats", nats_server.url, "--transitions"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigint,  # noqa: PLW1509  (no threads run at this point of the test)
    )
    try:
        assert watcher.stderr is not None
        assert "Viewing events on topic choria.machine.transition" in watcher.stderr.readline()
        watcher.send_signal(signum)
        assert watcher.wait(timeout=10) == 0
    finally:
        watcher.kill()
        watcher.communicate()
