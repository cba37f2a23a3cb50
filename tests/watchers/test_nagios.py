"""The nagios watcher on a fake clock, running real plugins."""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from machinery.core.clock import FakeClock
from machinery.core.machine import Machine
from machinery.watchers.nagios import NagiosWatcher, gjson_string, go_html_escape
from machinery.watchers.registry import check_manifest
from machinery.watchers.textfile import NagiosTextfile
from tests.support import (
    CORPUS,
    Recorder,
    assert_took,
    make_machine,
    make_node,
    running,
    wait_until,
    write_machine,
)

PROM = "choria_machine_nagios_watcher_status.prom"
START = 1_767_225_600.0  # FakeClock's default start, 2026-01-01T00:00:00Z

CHECK_SCRIPT = """\
#!/bin/sh
echo check >> checks.log
code=$(cat code.txt)
echo "CHECK $code: acme is fine | procs=3;1:1;1:1;0 'resident memory'=12MB"
exit $code
"""
REMEDIATE_SCRIPT = """\
#!/bin/sh
echo remediate >> remediate.log
"""


def scout_machine(tmp_path: Path, code: int = 0) -> Path:
    """The Puppet-generated Scout check from the corpus, with real scripts."""
    text = (CORPUS / "puppet-scout-check" / "machine.yaml").read_text()
    text = text.replace("/usr/lib64/nagios/plugins/check_procs -C acmed -c 1:1", "./check.sh")
    text = text.replace("service acmed restart", "./remediate.sh")
    directory = write_machine(
        tmp_path / "check_acme",
        text,
        {"check.sh": CHECK_SCRIPT, "remediate.sh": REMEDIATE_SCRIPT, "code.txt": f"{code}\n"},
    )
    return directory


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def prom_values(path: Path) -> dict[str, str]:
    """Every sample line of a textfile as {"metric{labels}": "value"}."""
    result = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            result[key] = value
    return result


def nagios(machine: Machine) -> NagiosWatcher:
    watcher = machine.watchers[0]
    assert isinstance(watcher, NagiosWatcher)
    return watcher


async def test_puppet_scout_check_lifecycle(tmp_path: Path) -> None:
    directory = scout_machine(tmp_path)
    textdir = tmp_path / "prom"
    textdir.mkdir()
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder, textfile_directory=textdir)
    prom = textdir / PROM
    async with running(machine):
        await clock.advance(0)
        watcher = nagios(machine)
        # Registered as UNKNOWN at creation: the counter starts at 1.
        assert prom_values(prom) == {
            "choria_machine_nagios_start_time": str(int(START)),
            'choria_machine_nagios_watcher_status{name="check_acme",status="UNKNOWN"}': "3",
            'choria_machine_nagios_watcher_last_run_seconds{name="check_acme"}': str(int(START)),
            'choria_machine_nagios_watcher_checks_count{name="check_acme"}': "1",
        }
        assert stat.S_IMODE(prom.stat().st_mode) == 0o644
        before = watcher.current_state().payload
        assert before["status"] == "NOTCHECKED" and before["status_code"] == 5
        assert before["check_time"] == -62135596800
        assert before["perfdata"] is None and before["history"] == [] and before["plugin"] == ""

        # The first check comes after a random splay within one interval.
        splay = watcher.status.next_run
        assert splay is not None and 0 <= splay < 120
        await clock.advance(splay - 0.01)
        assert lines(directory / "checks.log") == 0
        await clock.advance(0.01)
        await wait_until(lambda: machine.state == "OK")
        assert lines(directory / "checks.log") == 1
        first = recorder.states("check")[-1].payload
        assert first["status"] == "OK" and first["status_code"] == 0
        assert first["output"] == "CHECK 0: acme is fine | procs=3;1:1;1:1;0 'resident memory'=12MB"
        assert first["perfdata"] == [
            {"unit": "", "label": "procs", "value": 3.0},
            {"unit": "MB", "label": "resident_memory", "value": 12.0},
        ]
        assert first["plugin"] == "./check.sh"
        assert first["check_time"] == int(START + splay)

        # A CRITICAL check: the remediation runs in CRITICAL and moves the machine to UNKNOWN.
        (directory / "code.txt").write_text("2\n")
        await clock.advance(120)
        await wait_until(lambda: lines(directory / "remediate.log") == 1)
        await wait_until(lambda: machine.state == "UNKNOWN")
        assert recorder.transitions() == [
            ("OK", "UNKNOWN", "OK"),
            ("CRITICAL", "OK", "CRITICAL"),
            ("UNKNOWN", "CRITICAL", "UNKNOWN"),
        ]
        # Entering UNKNOWN set the remembered status without a check.
        assert watcher.previous == 3
        assert 'status{name="check_acme",status="UNKNOWN"}' in prom.read_text()

        # MAINTENANCE: no checks, and the status resets to OK (Choria's quirk).
        await machine.transition("MAINTENANCE")
        assert watcher.current_state().payload["status"] == "OK"
        values = prom_values(prom)
        assert values['choria_machine_nagios_watcher_status{name="check_acme",status="OK"}'] == "0"
        await clock.advance(600)
        assert lines(directory / "checks.log") == 2

        # RESUME leads to FORCE_CHECK: checked at once, outside state_match and the interval.
        (directory / "code.txt").write_text("1\n")
        await machine.transition("RESUME")
        await wait_until(lambda: machine.state == "WARNING")
        assert lines(directory / "checks.log") == 3
        # 1 at creation, then one per check and one per state change: OK check and state,
        # CRITICAL check and state, UNKNOWN state, MAINTENANCE state, WARNING check and state
        # (FORCE_CHECK itself does not count).
        await wait_until(
            lambda: (
                prom_values(prom).get(
                    'choria_machine_nagios_watcher_checks_count{name="check_acme"}'
                )
                == "9"
            )
        )
        assert (
            prom_values(prom)[
                'choria_machine_nagios_watcher_status{name="check_acme",status="WARNING"}'
            ]
            == "1"
        )

    assert [(t[0], t[2]) for t in recorder.transitions()[3:]] == [
        ("MAINTENANCE", "MAINTENANCE"),
        ("RESUME", "FORCE_CHECK"),
        ("WARNING", "WARNING"),
    ]
    states = recorder.states("check")
    assert [s.payload["status"] for s in states] == ["OK", "CRITICAL", "WARNING"]
    history = states[-1].payload["history"]
    assert [h["status"] for h in history] == [0, 2, 1]
    assert history[0]["execute"] == time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.gmtime(int(START + splay))
    ) + _fraction(START + splay)
    # The machine stopped: its entry is removed from the file.
    assert "check_acme" not in prom.read_text()


def _fraction(wall: float) -> str:
    # Go's RFC3339Nano: nanoseconds, trailing zeros dropped.
    nanos = f"{wall:.9f}".split(".")[1].rstrip("0")
    return ("." + nanos if nanos else "") + "Z"


async def test_checks_count_and_file_content_follow_choria(tmp_path: Path) -> None:
    directory = scout_machine(tmp_path)
    textdir = tmp_path / "prom"
    textdir.mkdir()
    clock = FakeClock()
    machine = make_machine(directory, clock=clock, textfile_directory=textdir)
    async with running(machine):
        await clock.advance(120)
        await wait_until(lambda: machine.state == "OK")
        await wait_until(lambda: "checks_count" in (textdir / PROM).read_text())
        content = (textdir / PROM).read_text()
    # creation 1, the check 2, entering OK 3
    assert content == (
        "# HELP choria_machine_nagios_start_time Time the Choria Machine subsystem started in "
        "unix seconds\n"
        "# TYPE choria_machine_nagios_start_time gauge\n"
        f"choria_machine_nagios_start_time {int(START)}\n"
        "# HELP choria_machine_nagios_watcher_status Choria Nagios Check Status\n"
        "# TYPE choria_machine_nagios_watcher_status gauge\n"
        'choria_machine_nagios_watcher_status{name="check_acme",status="OK"} 0\n'
        "# HELP choria_machine_nagios_watcher_last_run_seconds Choria Nagios Check Time\n"
        "# TYPE choria_machine_nagios_watcher_last_run_seconds gauge\n"
        + content.split("# TYPE choria_machine_nagios_watcher_last_run_seconds gauge\n")[1].split(
            "\n"
        )[0]
        + "\n"
        "# HELP choria_machine_nagios_watcher_checks_count Choria Nagios Check Count\n"
        "# TYPE choria_machine_nagios_watcher_checks_count counter\n"
        'choria_machine_nagios_watcher_checks_count{name="check_acme"} 3\n'
    )
    assert re.search(r'last_run_seconds\{name="check_acme"\} \d{10}\n', content)


def test_textfile_matches_the_documented_layout(tmp_path: Path) -> None:
    """Choria's docs show an older layout without start_time, the status label and the
    counter; with those taken out, our file is the documented one."""
    exporter = NagiosTextfile(tmp_path, 1592645000)
    exporter.update("check_httpd", 0, 1592645406)
    exporter.update("check_bacula_db", 0, 1592645405)
    ours = (tmp_path / PROM).read_text().splitlines()
    reduced = [
        re.sub(r',status="[A-Z]+"', "", line)
        for line in ours
        if "start_time" not in line and "checks_count" not in line
    ]
    documented = (CORPUS / "fragments" / "docs-nagios-prometheus-output.prom").read_text()
    assert sorted(reduced) == sorted(documented.splitlines())
    assert exporter.checks("check_httpd") == 1
    exporter.delete("check_httpd")
    assert "check_httpd" not in (tmp_path / PROM).read_text()
    # Without a usable directory nothing is written, but the state is kept.
    missing = NagiosTextfile(tmp_path / "missing", 0)
    assert missing.update("x", 3, 1) is False
    assert not (tmp_path / "missing").exists()
    assert 'name="x",status="UNKNOWN"' in missing.render()


# -- a generic check machine driven by FORCE_CHECK -------------------------------------------------

GENERIC = """\
name: check_x
version: 1.0.0
initial_state: UNKNOWN
transitions:
  - name: UNKNOWN
    from: [UNKNOWN, OK, WARNING, CRITICAL, FORCE_CHECK]
    destination: UNKNOWN
  - name: OK
    from: [UNKNOWN, OK, WARNING, CRITICAL, FORCE_CHECK]
    destination: OK
  - name: WARNING
    from: [UNKNOWN, OK, WARNING, CRITICAL, FORCE_CHECK]
    destination: WARNING
  - name: CRITICAL
    from: [UNKNOWN, OK, WARNING, CRITICAL, FORCE_CHECK]
    destination: CRITICAL
  - name: FORCE_CHECK
    from: [UNKNOWN, OK, WARNING, CRITICAL]
    destination: FORCE_CHECK
  - name: MAINTENANCE
    from: [UNKNOWN, OK, WARNING, CRITICAL, FORCE_CHECK]
    destination: MAINTENANCE
  - name: RESUME
    from: [MAINTENANCE]
    destination: FORCE_CHECK
watchers:
  - name: check
    type: nagios
    interval: {interval}
    state_match: [UNKNOWN, OK, WARNING, CRITICAL]
    properties:
{properties}
"""


def generic_machine(
    tmp_path: Path, properties: str, *, interval: str = "0s", files: dict[str, str] | None = None
) -> Path:
    text = GENERIC.format(
        interval=interval,
        properties="\n".join("      " + line for line in properties.strip().splitlines()),
    )
    return write_machine(tmp_path / "check_x", text, files)


async def force(machine: Machine, recorder: Recorder | None = None) -> None:
    """Fire FORCE_CHECK and wait until the check has moved the machine on."""
    published = len(recorder.states()) if recorder else 0
    await machine.transition("FORCE_CHECK")
    await wait_until(lambda: machine.state != "FORCE_CHECK", what="the forced check")
    if recorder is not None:
        await wait_until(lambda: len(recorder.states()) > published)


async def test_exit_codes_map_to_statuses_and_transitions(tmp_path: Path) -> None:
    directory = generic_machine(
        tmp_path,
        "plugin: ./check.sh\nannotations:\n  team: ops\n  url: http://wiki/acme",
        files={"check.sh": CHECK_SCRIPT, "code.txt": "0"},
    )
    recorder = Recorder()
    clock = FakeClock()
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await clock.advance(0)
        seen = []
        for code, status in (
            (1, "WARNING"),
            (2, "CRITICAL"),
            (3, "UNKNOWN"),
            (0, "OK"),
            (9, "UNKNOWN"),
        ):
            (directory / "code.txt").write_text(str(code))
            await clock.advance(7)
            await force(machine, recorder)
            assert machine.state == status
            payload = recorder.states("check")[-1].payload
            assert payload["status"] == status
            assert (
                payload["status_code"]
                == {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[status]
            )
            assert payload["annotations"] == {"team": "ops", "url": "http://wiki/acme"}
            seen.append(payload["check_time"])
        assert seen == [int(START) + 7 * n for n in range(1, 6)]
    # Code 9 is logged as unexpected.
    assert "unexpected code 9" in (nagios(machine).status.last_error or "")
    assert [t[0] for t in recorder.transitions() if t[0] != "FORCE_CHECK"] == [
        "WARNING",
        "CRITICAL",
        "UNKNOWN",
        "OK",
        "UNKNOWN",
    ]


@pytest.mark.parametrize("code", [4, 5])
async def test_exit_codes_4_and_5_are_ignored(tmp_path: Path, code: int) -> None:
    directory = generic_machine(
        tmp_path, "plugin: ./check.sh", files={"check.sh": CHECK_SCRIPT, "code.txt": str(code)}
    )
    recorder = Recorder()
    clock = FakeClock()
    machine = make_machine(directory, recorder=recorder, clock=clock)
    async with running(machine):
        await machine.transition("FORCE_CHECK")
        watcher = nagios(machine)
        await wait_until(lambda: watcher.previous_output.startswith(f"CHECK {code}"))
        await clock.advance(1)
        assert machine.state == "FORCE_CHECK"  # no transition
        assert recorder.states("check") == []  # no event
        assert watcher.history == []
        assert watcher.current_state().payload["status"] == "NOTCHECKED"


async def test_timeout_and_missing_plugin_are_unknown(tmp_path: Path) -> None:
    files = {"slow.sh": "#!/bin/sh\necho partial\nsleep 30\n"}
    directory = generic_machine(tmp_path, "plugin: ./slow.sh\ntimeout: 300ms", files=files)
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    began = time.monotonic()
    async with running(machine):
        await force(machine, recorder)
    assert_took(time.monotonic() - began, 10.0, "nagios plugin killed at its 300 ms timeout")
    assert machine.state == "UNKNOWN"
    payload = recorder.states("check")[-1].payload
    assert payload["status"] == "UNKNOWN" and payload["output"] == "partial"
    assert "timed out after 0.3s" in (nagios(machine).status.last_error or "")

    directory = generic_machine(tmp_path / "b", "plugin: ./not-there.sh --x")
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await force(machine, recorder)
    payload = recorder.states("check")[-1].payload
    assert machine.state == "UNKNOWN"
    assert payload["status"] == "UNKNOWN"
    assert payload["output"] == "command not found: ./not-there.sh"
    assert payload["perfdata"] is None


async def test_payload_fields_and_text(tmp_path: Path) -> None:
    directory = generic_machine(
        tmp_path, "plugin: ./check.sh", files={"check.sh": CHECK_SCRIPT, "code.txt": "2"}
    )
    recorder = Recorder()
    clock = FakeClock(start=1_700_000_000.25)
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await force(machine, recorder)
    state = recorder.states("check")[0]
    payload = state.payload
    assert list(payload) == [
        "protocol",
        "identity",
        "id",
        "version",
        "timestamp",
        "type",
        "machine",
        "name",
        "plugin",
        "status",
        "status_code",
        "output",
        "check_time",
        "perfdata",
        "runtime",
        "history",
        "annotations",
    ]
    assert payload["protocol"] == "io.choria.machine.watcher.nagios.v1.state"
    assert payload["type"] == "nagios" and payload["machine"] == "check_x"
    assert payload["check_time"] == 1_700_000_000
    assert isinstance(payload["runtime"], float) and payload["runtime"] > 0
    perf = [
        {"unit": "", "label": "procs", "value": 3.0},
        {"unit": "MB", "label": "resident_memory", "value": 12.0},
    ]
    assert payload["perfdata"] == perf
    assert payload["history"] == [
        {"execute": "2023-11-14T22:13:20.25Z", "status": 2, "perfdata": perf}
    ]
    assert payload["annotations"] == {}
    json.dumps(payload)  # serialisable as is
    assert state.text == (
        "node1.example.net check_x#check CRITICAL: "
        "CHECK 2: acme is fine | procs=3;1:1;1:1;0 'resident memory'=12MB"
    )
    assert NagiosWatcher.describe_payload(payload) == state.text


async def test_history_keeps_fifteen_and_omits_empty_perfdata(tmp_path: Path) -> None:
    files = {"plain.sh": "#!/bin/sh\necho fine\n"}
    directory = generic_machine(tmp_path, "plugin: ./plain.sh", files=files)
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        for _ in range(17):
            await force(machine, recorder)
    history = recorder.states("check")[-1].payload["history"]
    assert len(history) == 15
    assert all(set(entry) == {"execute", "status"} for entry in history)
    assert recorder.states("check")[-1].payload["perfdata"] is None


async def test_interval_guard_skips_a_tick_right_after_a_forced_check(tmp_path: Path) -> None:
    directory = generic_machine(
        tmp_path,
        "plugin: ./check.sh",
        interval="1m",
        files={"check.sh": CHECK_SCRIPT, "code.txt": "0"},
    )
    clock = FakeClock()
    machine = make_machine(directory, clock=clock)
    log = directory / "checks.log"
    async with running(machine):
        await clock.advance(0)
        splay = nagios(machine).status.next_run
        assert splay is not None
        await clock.advance(splay)
        await wait_until(lambda: machine.state == "OK")
        assert lines(log) == 1
        await clock.advance(30)
        await force(machine)
        assert lines(log) == 2
        await clock.advance(30)  # the tick 30s after the forced check: too soon, skipped
        await clock.settle()
        assert lines(log) == 2
        assert nagios(machine).status.outcome == "skipped"
        await clock.advance(60)  # 90s after it: checked
        await wait_until(lambda: lines(log) == 3)


async def test_no_interval_means_only_forced_checks(tmp_path: Path) -> None:
    directory = generic_machine(
        tmp_path, "plugin: ./check.sh", files={"check.sh": CHECK_SCRIPT, "code.txt": "0"}
    )
    clock = FakeClock()
    machine = make_machine(directory, clock=clock)
    async with running(machine):
        await clock.advance(86400)
        assert lines(directory / "checks.log") == 0
        assert nagios(machine).status.next_run is None
        await force(machine)
        assert lines(directory / "checks.log") == 1


async def test_checks_never_overlap(tmp_path: Path) -> None:
    files = {
        "slow.sh": """\
        #!/bin/sh
        echo start >> runs.log
        sleep 0.2
        echo end >> runs.log
        """
    }
    directory = generic_machine(tmp_path, "plugin: ./slow.sh", interval="500ms", files=files)
    clock = FakeClock()
    machine = make_machine(directory, clock=clock)
    async with running(machine):
        for _ in range(10):
            await clock.advance(0.5)
        # Ticks during a run coalesce into one run after it.
        await wait_until(
            lambda: (
                lines(directory / "runs.log") >= 4
                and (directory / "runs.log").read_text().endswith("end\n")
            )
        )
    entries = (directory / "runs.log").read_text().split()
    assert len(entries) >= 4
    assert entries == ["start", "end"] * (len(entries) // 2)


# -- plugin rendering ------------------------------------------------------------------------------

ARGS_SCRIPT = """\
#!/bin/sh
for a in "$@"; do printf '%s\\n' "$a" >> args.log; done
"""


async def test_plugin_overrides_are_rendered_per_argument_and_html_escaped(tmp_path: Path) -> None:
    overrides = tmp_path / "overrides.json"
    overrides.write_text(
        json.dumps(
            {
                "check_x": {"warn": 5, "crit": "<30> & 'x'", "ratio": 1.50, "list": [1, "a"]},
                "other": {"warn": 99},
            }
        )
    )
    directory = generic_machine(
        tmp_path,
        'plugin: ./args.sh -w {{ o "warn" 10 }} -c "{{ o "crit" 20 }}" '
        '-r {{ o "ratio" 1 }} -l {{ o "list" "" }} -d {{ o "missing" "a b+c" }} '
        '-e {{ o "missing" "" }} last',
        files={"args.sh": ARGS_SCRIPT},
    )
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder, overrides_file=overrides)
    async with running(machine):
        await force(machine, recorder)
    args = (directory / "args.log").read_text().splitlines()
    assert args == [
        "-w",
        "5",
        "-c",
        "&lt;30&gt; &amp; &#39;x&#39;",
        "-r",
        "1.5",
        "-l",
        "[1,&#34;a&#34;]",
        "-d",
        "a b&#43;c",
        "-e",
        "last",
    ]
    # Choria publishes the whole line rendered (html/template), not the argv re-quoted: the
    # template's own quotes stay, and the empty default leaves two spaces.
    plugin = recorder.states("check")[-1].payload["plugin"]
    assert plugin == (
        './args.sh -w 5 -c "&lt;30&gt; &amp; &#39;x&#39;" -r 1.5 -l [1,&#34;a&#34;] '
        "-d a b&#43;c -e  last"
    )


async def test_plugin_defaults_without_overrides(tmp_path: Path) -> None:
    directory = generic_machine(
        tmp_path,
        'plugin: ./args.sh -w {{ o "warn" 10 }} -c {{ o "crit" 2.5 }} -t {{ o "t" true }}',
        files={"args.sh": ARGS_SCRIPT},
    )
    for overrides in (None, tmp_path / "absent.json", tmp_path / "broken.json"):
        (tmp_path / "broken.json").write_text("{not json")
        (directory / "args.log").unlink(missing_ok=True)
        recorder = Recorder()
        machine = make_machine(directory, recorder=recorder, overrides_file=overrides)
        async with running(machine):
            await force(machine, recorder)
        assert (directory / "args.log").read_text().splitlines() == [
            "-w",
            "10",
            "-c",
            "2.5",
            "-t",
            "true",
        ]


async def test_plugin_template_error_is_unknown(tmp_path: Path) -> None:
    directory = generic_machine(tmp_path, 'plugin: ./args.sh {{ o "only-one-argument" }}')
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await force(machine, recorder)
    payload = recorder.states("check")[-1].payload
    assert payload["status"] == "UNKNOWN"
    assert payload["output"].startswith("could not process overrides for plugin command:")
    assert "wrong number of args for o" in payload["output"]


def test_escaping_and_gjson_strings() -> None:
    assert go_html_escape("\0<a href='x'>\"&+</a>") == (
        "\ufffd&lt;a href=&#39;x&#39;&gt;&#34;&amp;&#43;&lt;/a&gt;"
    )
    assert gjson_string(None) == ""
    assert gjson_string(True) == "true" and gjson_string(False) == "false"
    assert gjson_string(10) == "10" and gjson_string(10.0) == "10"
    assert gjson_string(1e21) == "1000000000000000000000"
    assert gjson_string(1.5e-7) == "0.00000015"
    assert gjson_string({"a": [1, "b"]}) == '{"a":[1,"b"]}'


# -- built-ins -------------------------------------------------------------------------------------


async def test_heartbeat(tmp_path: Path) -> None:
    directory = generic_machine(tmp_path, "builtin: heartbeat")
    recorder = Recorder()
    clock = FakeClock(start=1_700_000_123.9)
    machine = make_machine(directory, clock=clock, recorder=recorder)
    async with running(machine):
        await force(machine, recorder)
    payload = recorder.states("check")[-1].payload
    assert machine.state == "OK"
    assert payload["status"] == "OK" and payload["output"] == "1700000123"
    assert payload["plugin"] == "heartbeat"


GOSS = """\
#!/bin/sh
printf '%s\\n' "$@" > goss-args.log
cat goss-result.json
exit $(cat goss-code.txt)
"""


def goss_result(count: int, failed: int) -> str:
    return json.dumps(
        {
            "results": [],
            "summary": {"test-count": count, "failed-count": failed, "total-duration": 1500000},
            "summary-line": f"Count: {count}, Failed: {failed}, Duration: 0.002s",
        }
    )


async def test_goss_runs_the_goss_program(tmp_path: Path) -> None:
    overrides = tmp_path / "overrides.json"
    overrides.write_text('{"check_x": {"port": 80}}')
    directory = generic_machine(
        tmp_path,
        "builtin: goss\ngossfile: goss.yaml",
        files={"goss": GOSS, "goss-result.json": goss_result(3, 1), "goss-code.txt": "1"},
    )
    (directory / "goss").chmod(0o755)
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder, overrides_file=overrides)
    async with running(machine):
        await force(machine, recorder)
        assert machine.state == "CRITICAL"
        payload = recorder.states("check")[-1].payload
        assert payload["output"] == (
            "CRITICAL: Count: 3, Failed: 1, Duration: 0.002s|checks=3;; failed=1;; runtime=0.001500s"
        )
        assert payload["perfdata"] == [
            {"unit": "", "label": "checks", "value": 3.0},
            {"unit": "", "label": "failed", "value": 1.0},
            {"unit": "s", "label": "runtime", "value": 0.0015},
        ]
        assert payload["plugin"] == "goss"
        assert (directory / "goss-args.log").read_text().splitlines() == [
            "--gossfile",
            "goss.yaml",
            "--vars",
            str(overrides),
            "validate",
            "--format",
            "json",
            "--max-concurrent",
            "1",
        ]
        (directory / "goss-result.json").write_text(goss_result(3, 0))
        (directory / "goss-code.txt").write_text("0")
        await force(machine, recorder)
        assert machine.state == "OK"
        assert recorder.states("check")[-1].payload["output"].startswith("OK: Count: 3, Failed: 0")
        (directory / "goss-result.json").write_text("Error: file goss.yaml not found")
        await force(machine, recorder)
        assert machine.state == "UNKNOWN"
        assert recorder.states("check")[-1].payload["output"] == (
            "UNKNOWN: goss validate failed: Error: file goss.yaml not found"
        )


async def test_goss_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    directory = generic_machine(tmp_path, "builtin: goss_check\ngossfile: goss.yaml")
    recorder = Recorder()
    machine = make_machine(directory, recorder=recorder)
    async with running(machine):
        await force(machine, recorder)
    payload = recorder.states("check")[-1].payload
    assert machine.state == "UNKNOWN"
    assert payload["output"] == "UNKNOWN: goss is not installed"
    assert payload["plugin"] == "goss_check"


class Health:
    """An agent-status source with a settable health report."""

    def __init__(self, **values: Any) -> None:
        self.values: dict[str, Any] = {
            "uptime": 3600.0,
            "machines": 4,
            "invalid_machines": 0,
            "nats_connected": True,
            "last_event_age": 12.5,
            "spool_depth": 2,
        }
        self.values.update(values)

    def health(self) -> Mapping[str, Any]:
        return self.values


@pytest.mark.parametrize("builtin", ["agent_status", "choria_status"])
async def test_agent_status(tmp_path: Path, builtin: str) -> None:
    directory = generic_machine(tmp_path, f"builtin: {builtin}\nlast_message: 5m")
    recorder = Recorder()
    node = make_node(recorder=recorder)
    machine = make_machine(directory, node=node)

    async def check() -> dict[str, Any]:
        await force(machine, recorder)
        return dict(recorder.states("check")[-1].payload)

    perf = "uptime=3600;; machines=4;; invalid_machines=0;; spool_depth=2;; last_event_age=12;;"
    async with running(machine):
        payload = await check()
        assert (payload["status"], payload["output"]) == ("UNKNOWN", "Agent status not available")
        health = Health()
        node.provide("agent-status", health)
        payload = await check()
        assert (payload["status"], payload["output"]) == ("OK", f"OK: 4 machines|{perf}")
        assert [p["label"] for p in payload["perfdata"]] == [
            "uptime",
            "machines",
            "invalid_machines",
            "spool_depth",
            "last_event_age",
        ]
        health.values["invalid_machines"] = 1
        payload = await check()
        assert payload["status"] == "WARNING"
        assert payload["output"].startswith("WARNING: 1 invalid machines|")
        health.values["nats_connected"] = False
        payload = await check()
        assert payload["status"] == "CRITICAL"
        assert payload["output"].startswith("CRITICAL: Not connected to any server|uptime=3600;;")
        health.values.update(nats_connected=None, invalid_machines=0, last_event_age=301.0)
        payload = await check()
        assert payload["status"] == "CRITICAL"
        assert payload["output"].startswith("CRITICAL: last event handled 5m1s ago, limit 5m0s|")
        health.values.update(last_event_age=None, uptime=60.0)
        payload = await check()
        assert payload["status"] == "OK"  # no event yet, but only up for a minute
        assert "last_event_age" not in payload["output"]
        health.values.update(uptime=600.0)
        payload = await check()
        assert payload["status"] == "CRITICAL"
        assert payload["output"].startswith("CRITICAL: no event handled since start 10m0s ago")
        health.values["uptime"] = "broken"
        payload = await check()
        assert payload["status"] == "CRITICAL"
        assert payload["output"].startswith("Agent status error:")


# -- several machines share one textfile -----------------------------------------------------------


async def test_all_nagios_machines_of_a_node_share_the_textfile(tmp_path: Path) -> None:
    textdir = tmp_path / "prom"
    textdir.mkdir()
    clock = FakeClock()
    node = make_node(clock=clock, textfile_directory=textdir)
    first = make_machine(scout_machine(tmp_path / "a"), node=node)
    second_dir = generic_machine(tmp_path / "b", "builtin: heartbeat")
    second = make_machine(second_dir, node=node)
    prom = textdir / PROM
    async with running(first):
        await clock.advance(0)
        async with running(second):
            await clock.advance(0)
            await force(second)
            values = prom_values(prom)
            assert (
                values['choria_machine_nagios_watcher_status{name="check_acme",status="UNKNOWN"}']
                == "3"
            )
            assert values['choria_machine_nagios_watcher_status{name="check_x",status="OK"}'] == "0"
            assert values['choria_machine_nagios_watcher_checks_count{name="check_x"}'] == "3"
            order = [line for line in prom.read_text().splitlines() if "watcher_status{" in line]
            assert order == sorted(order)
        assert "check_x" not in prom.read_text()
        assert "check_acme" in prom.read_text()
    assert "check_acme" not in prom.read_text()
    assert prom.read_text().count("start_time") == 3  # the header stays


# -- load-time checks ------------------------------------------------------------------------------


def diagnostics(tmp_path: Path, properties: str, **options: str) -> list[tuple[str, str]]:
    directory = generic_machine(tmp_path, properties, interval=options.pop("interval", "1m"))
    text = (directory / "machine.yaml").read_text()
    for key, value in options.items():
        text = text.replace("    type: nagios\n", f"    type: nagios\n    {key}: {value}\n")
    (directory / "machine.yaml").write_text(text)
    _, found = check_manifest(directory / "machine.yaml")
    return [(d.severity.value, d.message) for d in found]


def test_load_time_checks(tmp_path: Path) -> None:
    assert diagnostics(tmp_path / "a", "plugin: x\nbuiltin: heartbeat") == [
        ("error", "cannot set plugin and builtin")
    ]
    assert diagnostics(tmp_path / "b", "timeout: 5s") == [
        ("error", "plugin or builtin is required")
    ]
    assert diagnostics(tmp_path / "c", "builtin: goss") == [
        ("error", "gossfile property is required for the goss builtin check")
    ]
    assert diagnostics(tmp_path / "d", "builtin: choria_status") == [
        ("error", "last_message property is required for the choria_status builtin check")
    ]
    [(severity, message)] = diagnostics(tmp_path / "e", "builtin: nope")
    assert severity == "error" and message.startswith("unsupported builtin 'nope'")
    [(severity, message)] = diagnostics(tmp_path / "f", 'plugin: ./x {{ lookup "a" "b" }}')
    assert severity == "error" and 'function "lookup" not defined' in message
    found = diagnostics(
        tmp_path / "g",
        "builtin: agent_status\nlast_message: 1m\npubcert_expire: 1h\ntoken_expire: 1h",
        success_transition="OK",
    )
    assert found == [
        (
            "warning",
            "success_transition is ignored by nagios watchers: they fire the transition named "
            "after the status (OK, WARNING, CRITICAL, UNKNOWN)",
        ),
        (
            "warning",
            "pubcert_expire is ignored: there are no Choria certificates or tokens to check",
        ),
        ("warning", "token_expire is ignored: there are no Choria certificates or tokens to check"),
    ]
    [(severity, message)] = diagnostics(tmp_path / "h", "plugin: ./x", interval="100ms")
    assert severity == "error" and "too small" in message
    assert diagnostics(tmp_path / "i", 'plugin: ./x -w {{ o "warn" 1 }}\ntimeout: 10s') == []


def test_corpus_scout_checks_load_cleanly() -> None:
    for name in ("puppet-scout-check", "check-httpd"):
        manifest, found = check_manifest(CORPUS / name / "machine.yaml")
        assert manifest is not None and found == [], name


def test_watcher_type_is_registered() -> None:
    from machinery.watchers.registry import default_registry

    assert default_registry()["nagios"] is NagiosWatcher
