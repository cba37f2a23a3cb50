"""The metric watcher on a fake clock, running real commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from machinery.watchers.metric import MetricRegistry, MetricWatcher, parse_metric_output
from machinery.watchers.registry import check_manifest
from machinery.watchers.textfile import MetricTextfile
from tests.support import (
    CORPUS,
    Recorder,
    make_machine,
    make_node,
    running,
    wait_until,
    write_machine,
)

CHORIA_OUTPUT = (CORPUS / "fragments" / "docs-metric-choria-format-output.json").read_text()
NAGIOS_OUTPUT = (CORPUS / "fragments" / "docs-metric-nagios-perfdata-output.txt").read_text()
PROM = "choria_machine_metrics_watcher_status.prom"
START = 1_767_225_600

CAT = """\
#!/bin/sh
echo run >> runs.log
cat output.txt
"""

MACHINE = """\
name: kasa_metric
version: 1.0.0
initial_state: GATHER
transitions:
  - name: MAINTENANCE
    from: [GATHER]
    destination: MAINTENANCE
  - name: RESUME
    from: [MAINTENANCE]
    destination: GATHER
  - name: bad_output
    from: [GATHER]
    destination: BROKEN
  - name: fixed
    from: [BROKEN]
    destination: GATHER
watchers:
  - name: {name}
    type: metric
    state_match: [GATHER]
    fail_transition: bad_output
    properties:
{properties}
"""


def metric_machine(
    tmp_path: Path,
    properties: str = "",
    *,
    output: str = CHORIA_OUTPUT,
    name: str = "kasa",
    extra_watcher: str = "",
    directory_name: str = "kasa_metric",
) -> Path:
    props = "command: ./metric.sh\ninterval: 1m\n" + properties
    text = MACHINE.format(
        name=name,
        properties="\n".join("      " + line for line in props.strip().splitlines()),
    )
    text += extra_watcher
    return write_machine(tmp_path / directory_name, text, {"metric.sh": CAT, "output.txt": output})


def runs(directory: Path) -> int:
    log = directory / "runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def watcher_of(machine: Machine, index: int = 0) -> MetricWatcher:
    watcher = machine.watchers[index]
    assert isinstance(watcher, MetricWatcher)
    return watcher


async def first_run(machine: Machine, clock: FakeClock, recorder: Recorder, count: int = 1) -> None:
    """Move past the splay of the first run and wait for its event."""
    await clock.advance(60)
    await wait_until(lambda: len(recorder.states()) >= count, what="the first metric event")


KASA = {
    "current_amp": 0.020999999716877937,
    "on_seconds": 0.0,
    "power_state": 0.0,
    "power_watt": 0.0,
    "total_watt": 0.3330000042915344,
    "voltage_volt": 239.38099670410156,
}
KASA_LABELS = {
    "format": "choria",
    "alias": "Geyser",
    "id": "xxx",
    "model": "HS110(UK)",
    "location": "home",
}


async def test_choria_format_is_published_to_events_textfile_and_http(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path, "labels:\n  location: home")
    textdir = tmp_path / "prom"
    textdir.mkdir()
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, textfile_directory=textdir)
    async with running(machine):
        await clock.advance(0)
        registry = machine.node.service("metrics")
        assert isinstance(registry, MetricRegistry)
        assert registry.get("kasa_metric", "kasa") == {"labels": {}, "metrics": {}, "time": 0}
        assert registry.get("kasa_metric", "other") is None
        splay = watcher_of(machine).status.next_run
        assert splay is not None and 0 <= splay < 60
        await clock.advance(splay - 0.01)
        assert runs(directory) == 0
        await clock.advance(0.01)
        await wait_until(lambda: len(recorder.states("kasa")) == 1)
        served = registry.get("kasa_metric", "kasa")
    assert machine.state == "GATHER"  # success_transition is never fired; there is none
    state = recorder.states("kasa")[0]
    payload = state.payload
    assert list(payload)[-1] == "metrics" and len(payload) == 9
    assert payload["protocol"] == "io.choria.machine.watcher.metric.v1.state"
    block = payload["metrics"]
    runtime = block["metrics"]["choria_runtime_seconds"]
    assert isinstance(runtime, float) and runtime > 0
    assert block == {
        "labels": KASA_LABELS,
        "metrics": {**KASA, "choria_runtime_seconds": runtime},
        "time": START + int(splay),
    }
    assert served == block
    assert state.text == (
        "node1.example.net kasa_metric#kasa metrics: current_amp=0.021, on_seconds=0.000, "
        "power_state=0.000, power_watt=0.000, total_watt=0.333, voltage_volt=239.381, "
        f"choria_runtime_seconds={runtime:0.3f}"
    )
    assert MetricWatcher.describe_payload(payload) == state.text

    prom = textdir / PROM
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    labels = 'alias="geyser",format="choria",id="xxx",location="home",model="hs110(uk)"'
    expected = ""
    for key, value in sorted({**KASA, "choria_runtime_seconds": runtime}.items()):
        name = f"choria_machine_metric_watcher_kasa_{key}"
        expected += f"# HELP {name} Choria Metric\n# TYPE {name} gauge\n"
        expected += f"{name}{{{labels}}} {value:f}\n"
    # Written while the machine ran; its removal at stop rewrote it empty.
    assert prom.read_text() == ""
    exporter = MetricTextfile(tmp_path)
    exporter.update("kasa_metric", "kasa", block["labels"], block["metrics"])
    assert (tmp_path / PROM).read_text() == expected


def parse_prom(text: str) -> dict[str, tuple[frozenset[tuple[str, str]], str]]:
    result = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        assert match, line
        labels = frozenset(tuple(pair.split("=", 1)) for pair in match.group(2).split(","))
        result[match.group(1)] = (labels, match.group(3))
    return result


async def test_textfile_matches_the_documented_output(tmp_path: Path) -> None:
    """The docs show the same device read at another moment, before the format label."""
    directory = metric_machine(tmp_path, "labels:\n  location: home")
    textdir = tmp_path / "prom"
    textdir.mkdir()
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, textfile_directory=textdir)
    async with running(machine):
        await first_run(machine, clock, recorder)
        ours = parse_prom((textdir / PROM).read_text())
        text = (textdir / PROM).read_text()
    documented = parse_prom(
        (CORPUS / "fragments" / "docs-metric-prometheus-output.prom").read_text()
    )
    assert set(ours) == set(documented)
    for name, (labels, _) in documented.items():
        assert ours[name][0] == labels | {("format", '"choria"')}
    assert ours["choria_machine_metric_watcher_kasa_voltage_volt"][1] == "239.380997"
    assert ours["choria_machine_metric_watcher_kasa_total_watt"][1] == "0.333000"
    # Each metric has its HELP and TYPE lines, like the documented file.
    assert text.count("# HELP") == text.count("# TYPE") == len(documented)


async def test_nagios_format(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path, output=NAGIOS_OUTPUT)
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await first_run(machine, clock, recorder)
    block = recorder.states("kasa")[0].payload["metrics"]
    assert block["labels"] == {"format": "nagios"}
    runtime = block["metrics"].pop("choria_runtime_seconds")
    assert runtime > 0
    assert block["metrics"] == {
        "time_since_last_run": 1491.0,
        "failed_resources": 0.0,
        "failed_events": 0.0,
        "last_run_duration": 59.67,
    }


async def test_labels_property_overrides_command_labels(tmp_path: Path) -> None:
    output = json.dumps(
        {"labels": {"location": "office", "format": "custom", "room": "A"}, "metrics": {"t": 1}}
    )
    directory = metric_machine(tmp_path, "labels:\n  location: home\n  rack: 7", output=output)
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await first_run(machine, clock, recorder)
    assert recorder.states("kasa")[0].payload["metrics"]["labels"] == {
        "format": "custom",
        "location": "home",
        "room": "A",
        "rack": "7",
    }


SECOND_WATCHER = """\
  - name: other
    type: metric
    state_match: [GATHER]
    properties:
      command: ./other.sh
      interval: 1m
      store: true
"""


async def test_store_puts_the_metric_in_machine_data_and_watchers_clobber(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path, "store: true", extra_watcher=SECOND_WATCHER)
    (directory / "other.sh").write_text('#!/bin/sh\necho \'{"metrics": {"x": 2}}\'\n')
    (directory / "other.sh").chmod(0o755)
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await first_run(machine, clock, recorder, count=2)
    first, second = recorder.states()
    stored = machine.data.get("metric")
    last = second.payload["name"]
    # Each watcher replaces the whole "metric" key: only the last one written is left.
    assert list(stored) == [last]
    assert stored[last] == second.payload["metrics"]
    assert json.loads((directory / "machine_data.json").read_text())["metric"] == stored
    assert {first.payload["name"], last} == {"kasa", "other"}


async def test_skip_prometheus(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path, "skip_prometheus: true")
    textdir = tmp_path / "prom"
    textdir.mkdir()
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, textfile_directory=textdir)
    async with running(machine):
        await first_run(machine, clock, recorder)
        assert (textdir / PROM).read_text() == ""
    assert recorder.states("kasa")[0].payload["metrics"]["labels"]["format"] == "choria"


@contextlib.asynccontextmanager
async def graphite_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, received
    finally:
        server.close()
        await server.wait_closed()


async def test_graphite_receives_one_line_per_metric_and_the_runtime(tmp_path: Path) -> None:
    output = json.dumps({"metrics": {"temp": 21.5, "hum": 40}})
    async with graphite_server() as (port, received):
        directory = metric_machine(
            tmp_path,
            f"graphite_host: 127.0.0.1\ngraphite_port: '{port}'",
            output=output,
        )
        clock = FakeClock()
        recorder = Recorder()
        machine = make_machine(directory, clock=clock, recorder=recorder)
        async with running(machine):
            await first_run(machine, clock, recorder)
            await wait_until(lambda: len(received) == 1)
    block = recorder.states("kasa")[0].payload["metrics"]
    when = block["time"]
    lines = received[0].decode().splitlines()
    assert lines[:2] == [f"choria.kasa.temp 21.500000 {when}", f"choria.kasa.hum 40.000000 {when}"]
    assert re.fullmatch(rf"choria\.kasa\.runtime \d+\.\d{{6}} {when}", lines[2])
    assert len(lines) == 3


async def test_graphite_prefix_and_port_are_templates(tmp_path: Path) -> None:
    output = json.dumps({"metrics": {"temp": 1}})
    async with graphite_server() as (port, received):
        directory = metric_machine(
            tmp_path,
            'graphite_host: \'{{ lookup "facts.graphite" "x" }}\'\n'
            'graphite_port: \'{{ lookup "data.port" "0" }}\'\n'
            'graphite_prefix: \'site.{{ lookup "facts.site" "x" }}\'',
            output=output,
        )
        clock = FakeClock()
        recorder = Recorder()
        machine = make_machine(
            directory,
            clock=clock,
            recorder=recorder,
            facts={"graphite": "127.0.0.1", "site": "lon"},
        )
        machine.data.put("port", port)
        async with running(machine):
            await first_run(machine, clock, recorder)
            await wait_until(lambda: len(received) == 1)
    assert received[0].decode().startswith("site.lon.temp 1.000000 ")


async def test_graphite_failure_aborts_store_and_publish(tmp_path: Path) -> None:
    async with graphite_server() as (port, _):
        pass  # the port is closed now: nothing listens there
    directory = metric_machine(
        tmp_path, f"store: true\ngraphite_host: 127.0.0.1\ngraphite_port: '{port}'"
    )
    textdir = tmp_path / "prom"
    textdir.mkdir()
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, textfile_directory=textdir)
    async with running(machine):
        await clock.advance(60)
        watcher = watcher_of(machine)
        await wait_until(lambda: watcher.status.outcome == "error")
        # Prometheus came first and was updated.
        assert "kasa_voltage_volt" in (textdir / PROM).read_text()
        assert recorder.states() == []
        assert machine.data.get("metric") is None
        assert watcher.metric_snapshot() == {"labels": {}, "metrics": {}, "time": 0}
    assert "Graphite" in (watcher.status.last_error or "")


async def test_failed_command_reports_nothing_at_all(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path, "store: true")
    (directory / "metric.sh").write_text("#!/bin/sh\necho run >> runs.log\necho oops\nexit 1\n")
    textdir = tmp_path / "prom"
    textdir.mkdir()
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, textfile_directory=textdir)
    async with running(machine):
        await clock.advance(60)
        watcher = watcher_of(machine)
        await wait_until(lambda: watcher.status.outcome == "error")
    assert runs(directory) == 1
    assert recorder.events == []
    assert machine.data.get("metric") is None
    assert (textdir / PROM).read_text() == ""
    assert watcher.status.last_error == "Metric watcher ./metric.sh failed: exit status 1"


async def test_timeout_reports_nothing(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path, "timeout: 200ms")
    (directory / "metric.sh").write_text("#!/bin/sh\nsleep 30\n")
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(60)
        watcher = watcher_of(machine)
        await wait_until(lambda: watcher.status.outcome == "error")
    assert recorder.events == []
    assert "timed out after 0.2s" in (watcher.status.last_error or "")


async def test_invalid_json_publishes_and_fires_fail_transition(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path, output='{"metrics": {"a": "not a number"}}')
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(60)
        await wait_until(lambda: machine.state == "BROKEN")
    [state] = recorder.states("kasa")
    block = state.payload["metrics"]
    assert block["labels"] == {} and block["time"] == 0
    assert list(block["metrics"]) == ["choria_runtime_seconds"]
    assert recorder.transitions() == [("bad_output", "GATHER", "BROKEN")]
    assert "Failed to parse metric output" in (watcher_of(machine).status.last_error or "")


async def test_schedule_interval_state_changes_and_state_match(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path)
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(0)
        splay = watcher_of(machine).status.next_run
        assert splay is not None
        await clock.advance(splay)
        await wait_until(lambda: len(recorder.states("kasa")) == 1)
        await clock.advance(59)
        assert runs(directory) == 1
        await clock.advance(1)
        await wait_until(lambda: len(recorder.states("kasa")) == 2)
        assert runs(directory) == 2
        # A state change runs it, if active: MAINTENANCE is not in state_match.
        await machine.transition("MAINTENANCE")
        await clock.advance(600)
        assert runs(directory) == 2
        assert watcher_of(machine).status.outcome == "skipped"
        await machine.transition("RESUME")
        await wait_until(lambda: runs(directory) == 3)
        await wait_until(lambda: len(recorder.states("kasa")) == 3)
    assert watcher_of(machine).interval == 60


async def test_interval_defaults_to_and_is_at_least_one_second(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path)
    text = (directory / "machine.yaml").read_text().replace("interval: 1m", "interval: 100ms")
    (directory / "machine.yaml").write_text(text)
    machine = make_machine(directory)
    machine.build_watchers()
    assert watcher_of(machine).interval == 1.0
    text = text.replace("      interval: 100ms\n", "")
    (directory / "machine.yaml").write_text(text)
    machine = make_machine(directory)
    machine.build_watchers()
    assert watcher_of(machine).interval == 1.0


async def test_http_registry_follows_the_watcher(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path)
    clock = FakeClock()
    recorder = Recorder()
    node = make_node(clock=clock, recorder=recorder)
    machine = make_machine(directory, node=node)
    async with running(machine):
        await first_run(machine, clock, recorder)
        registry = node.service("metrics")
        assert isinstance(registry, MetricRegistry)
        assert registry.names() == [("kasa_metric", "kasa")]
        served = registry.get("kasa_metric", "kasa")
        assert served is not None and served["labels"]["alias"] == "Geyser"
        served["labels"]["alias"] = "changed"  # a copy: the watcher's metric is untouched
        assert registry.get("kasa_metric", "kasa")["labels"]["alias"] == "Geyser"  # type: ignore[index]
    assert registry.get("kasa_metric", "kasa") is None


# -- the shared textfile -----------------------------------------------------------------------------


def test_textfile_entries_expire_after_five_rewrites_without_update(tmp_path: Path) -> None:
    exporter = MetricTextfile(tmp_path)
    exporter.update("m1", "stale", {}, {"v": 1.0})
    exporter.update("m2", "fresh", {}, {"v": 2.0})  # rewrite 1 without update for "stale"
    for _ in range(3):
        exporter.save()  # rewrites 2-4
    assert "watcher_stale_v" in (tmp_path / PROM).read_text()
    exporter.update("m2", "fresh", {}, {"v": 3.0})  # rewrite 5 without update for "stale"
    text = (tmp_path / PROM).read_text()
    assert "watcher_stale_v" not in text
    assert "choria_machine_metric_watcher_fresh_v{} 3.000000" in text
    exporter.update("m1", "stale", {}, {"v": 4.0})  # updated again: back
    assert "choria_machine_metric_watcher_stale_v{} 4.000000" in (tmp_path / PROM).read_text()


def test_textfile_sanitising_and_grouping(tmp_path: Path) -> None:
    exporter = MetricTextfile(tmp_path)
    exporter.update(
        "machine_b",
        'Kasa Plug,"x"',
        {"Room Name": 'Living Room, "Big"', "9lives": "Yes\\No\nMaybe"},
        {"power_watt": 1.5, "/boot": 2.0},
    )
    exporter.update("machine_a", 'Kasa Plug,"x"', {"room": "hall"}, {"power_watt": 0.25})
    name = "choria_machine_metric_watcher_kasa_plug__x__power_watt"
    assert (tmp_path / PROM).read_text() == (
        "# HELP choria_machine_metric_watcher_kasa_plug__x___boot Choria Metric\n"
        "# TYPE choria_machine_metric_watcher_kasa_plug__x___boot gauge\n"
        "choria_machine_metric_watcher_kasa_plug__x___boot"
        '{_9lives="yes_no_maybe",room_name="living_room___big_"} 2.000000\n'
        f"# HELP {name} Choria Metric\n"
        f"# TYPE {name} gauge\n"
        f'{name}{{room="hall"}} 0.250000\n'
        f'{name}{{_9lives="yes_no_maybe",room_name="living_room___big_"}} 1.500000\n'
    )
    exporter.delete("machine_a", 'Kasa Plug,"x"')
    assert 'room="hall"' not in (tmp_path / PROM).read_text()
    # No directory: nothing written, nothing aged.
    assert MetricTextfile(None).update("m", "w", {}, {"v": 1}) is False


# -- output parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "labels", "metrics"),
    [
        (
            '{"labels": null, "metrics": {"a": null, "b": 1}}',
            {"format": "choria"},
            {"a": 0, "b": 1},
        ),
        (
            '{"LABELS": {"x": "y"}, "Metrics": {"a": 1.5}, "time": 5}',
            {"format": "choria", "x": "y"},
            {"a": 1.5},
        ),
        ("  \n{}", {"format": "choria"}, {}),
        ("no perfdata here", {"format": "nagios"}, {}),
        ("[1]", {"format": "nagios"}, {}),  # only output starting with "{" is JSON
    ],
)
def test_parse_metric_output(
    output: str, labels: dict[str, str], metrics: dict[str, float]
) -> None:
    assert parse_metric_output(output) == (labels, metrics)


@pytest.mark.parametrize(
    "output",
    [
        "{not json",
        '{"metrics": {"a": "1"}}',
        '{"metrics": {"a": true}}',
        '{"metrics": {"a": NaN}}',
        '{"metrics": {"a": 1e400}}',
        '{"labels": {"a": 1}}',
        '{"labels": []}',
        '{"metrics": {}} trailing',
        "{" * 100000,
    ],
)
def test_parse_metric_output_errors(output: str) -> None:
    with pytest.raises(ValueError):
        parse_metric_output(output)


# -- load-time checks ------------------------------------------------------------------------------


def diagnostics(tmp_path: Path, properties: str, watcher_extra: str = "") -> list[tuple[str, str]]:
    directory = metric_machine(tmp_path, properties)
    text = (directory / "machine.yaml").read_text()
    text = text.replace("    type: metric\n", "    type: metric\n" + watcher_extra, 1)
    (directory / "machine.yaml").write_text(text)
    _, found = check_manifest(directory / "machine.yaml")
    return [(d.severity.value, d.message) for d in found]


def test_load_time_checks(tmp_path: Path) -> None:
    assert diagnostics(tmp_path / "a", "") == []
    assert diagnostics(tmp_path / "b", "graphite_host: g\ngraphite_port: nope") == [
        ("error", "invalid graphite port 'nope'")
    ]
    assert diagnostics(tmp_path / "c", "graphite_host: g") == [
        ("warning", "graphite_host and graphite_port are both needed to publish to Graphite")
    ]
    assert diagnostics(tmp_path / "d", "", "    interval: 5m\n    success_transition: fixed\n") == [
        ("warning", "interval is ignored by metric watchers"),
        ("warning", "success_transition is never fired by metric watchers"),
    ]
    found = diagnostics(tmp_path / "e", "http: true\ntimeout: 0s")
    assert found == [("warning", "a timeout of 0 means the default of 1s")]


def test_interval_warnings(tmp_path: Path) -> None:
    directory = metric_machine(tmp_path)
    text = (directory / "machine.yaml").read_text()
    (directory / "machine.yaml").write_text(text.replace("      interval: 1m\n", ""))
    _, found = check_manifest(directory / "machine.yaml")
    assert [(d.severity.value, d.message) for d in found] == [
        (
            "warning",
            "interval is not set: the command runs every second (set properties.interval)",
        )
    ]
    (directory / "machine.yaml").write_text(text.replace("interval: 1m", "interval: 500ms"))
    _, found = check_manifest(directory / "machine.yaml")
    assert [d.message for d in found] == ["an interval below 1s is raised to 1s"]


def test_corpus_metric_machine_loads_cleanly() -> None:
    manifest, found = check_manifest(CORPUS / "puppet-scout-metric" / "machine.yaml")
    assert manifest is not None and found == []


def test_metric_snapshot_shape() -> None:
    registry = MetricRegistry()

    class Source:
        def metric_snapshot(self) -> dict[str, Any]:
            return {"labels": {}, "metrics": {}, "time": 0}

    source = Source()
    registry.register("m", "w", source)
    registry.unregister("m", "w", Source())  # another source: kept
    assert registry.get("m", "w") == {"labels": {}, "metrics": {}, "time": 0}
    registry.unregister("m", "w", source)
    assert registry.get("m", "w") is None
