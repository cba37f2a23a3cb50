"""Hostile input: facts, data and kv values crafted to inject arguments, options, paths or template
syntax into commands (exec, nagios, metric) and managed files; hostile archives; hostile HTTP
clients; tampered and replayed signed specifications.

Every value must stay data: one argument, the text as it was (``{{`` in a fact is text), no path
escape. The tests print what they tried and what they found.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import io
import json
import logging
import random
import socket
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery.core.clock import FakeClock
from machinery.core.extract import ExtractError, extract_tar_gz
from machinery.core.signing import SpecKind, keypair_from_seed, pack_specification
from tests.agent.test_store import LAMP, write
from tests.e2e.agent_process import AgentProcess
from tests.faults.procinfo import rss_kib
from tests.fuzz.strategies import HOSTILE_STRINGS
from tests.support import Recorder, assert_took, make_machine, running, wait_until, write_machine

# Values that reach commands: everything but NUL (which no argv can hold; see its own test).
INJECTIONS = [v for v in HOSTILE_STRINGS if "\x00" not in v] + [
    "x --force",
    "-o ProxyCommand=touch${IFS}/tmp/pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "; touch pwned",
    "\n--flag\n",
    "'\"'\"'",
    "{{ .data.secret }}",
    '{{ lookup "data.secret" "" }}',
    "{{/* */}}{{",
]

ARGV_SH = """\
#!/bin/sh
# Record every argument exactly (NUL-separated) and the HOSTILE variable, per watcher.
out="argv.$MACHINE_WATCHER_NAME"
: > "$out.tmp"
for a in "$@"; do printf '%s\\0' "$a" >> "$out.tmp"; done
printf '%s' "$HOSTILE" > "env.$MACHINE_WATCHER_NAME"
mv "$out.tmp" "$out"
echo 'OK | hostile=1'
"""

VICTIM = """\
name: victim
version: 1.0.0
initial_state: run
transitions:
  - name: stop
    from: [run]
    destination: stopped
watchers:
  - name: exec
    type: exec
    interval: 1m
    properties:
      command: >-
        ./argv.sh {{ .data.v }} "{{ lookup "facts.v" "" }}" --opt={{ .data.v }}
        '{{ .data.v }}' pre{{ .facts.v }}post
      environment: ["HOSTILE={{ .data.v }}"]
  - name: metric
    type: metric
    interval: 1m
    properties:
      command: ./argv.sh {{ .data.v }} {{ lookup "facts.v" "" }}
  - name: nagios
    type: nagios
    interval: 1m
    properties:
      plugin: ./argv.sh {{ o "v" "default" }} --fixed
  - name: managed
    type: file
    interval: 1m
    properties:
      path: managed.txt
      contents: "value={{ .data.v }} fact={{ .facts.v }}\\n"
      owner: root
      group: root
      mode: "0640"
"""


def all_ran(directory: Path) -> bool:
    return (
        all((directory / f"argv.{w}").exists() for w in ("exec", "metric", "nagios"))
        and (directory / "managed.txt").exists()
    )


def recorded(directory: Path, watcher: str) -> list[str]:
    raw = (directory / f"argv.{watcher}").read_bytes()
    return [part.decode() for part in raw.split(b"\0")[:-1]]


async def test_facts_data_and_overrides_stay_one_argument_each(tmp_path: Path) -> None:
    overrides = tmp_path / "overrides.json"
    clock = FakeClock()
    tried = 0
    for value in INJECTIONS:
        directory = write_machine(tmp_path / "victim", VICTIM, {"argv.sh": ARGV_SH})
        for watcher in ("exec", "metric", "nagios"):
            (directory / f"argv.{watcher}").unlink(missing_ok=True)
        (directory / "managed.txt").unlink(missing_ok=True)
        overrides.write_text(json.dumps({"victim": {"v": value}}))
        machine = make_machine(
            directory,
            clock=clock,
            facts={"v": value},
            overrides_file=overrides,
            textfile_directory=None,
        )
        machine.data.update({"v": value, "secret": "LEAKED"})
        async with running(machine):
            await clock.advance(60)
            await wait_until(functools.partial(all_ran, directory), what="every watcher ran")
        assert recorded(directory, "exec") == [
            value,
            value,
            f"--opt={value}",
            value,
            f"pre{value}post",
        ]
        assert (directory / "env.exec").read_bytes().decode() == value
        expected_metric = [value, value] if value else []
        assert recorded(directory, "metric") == expected_metric
        # nagios renders the plugin as Go's html/template does: values are HTML-escaped.
        from machinery.watchers.nagios import go_html_escape

        assert recorded(directory, "nagios") == [
            *([go_html_escape(value)] if value else []),
            "--fixed",
        ]
        managed = (directory / "managed.txt").read_bytes().decode()
        assert managed == f"value={value} fact={value}\n"
        assert "LEAKED" not in managed
        assert not (directory / "pwned").exists() and not Path("/tmp/pwned").exists()
        tried += 1
    print(
        f"{tried} hostile values through facts, data and overrides into exec (5 argument "
        "shapes and the environment), metric, nagios and a managed file: each stayed one "
        "argument, verbatim, never rendered twice"
    )


async def test_a_nul_byte_in_data_is_an_error_outcome_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = """\
        name: nul
        version: 1.0.0
        initial_state: run
        transitions:
          - name: failed
            from: [run]
            destination: broken
        watchers:
          - name: job
            type: exec
            state_match: [run]
            fail_transition: failed
            interval: 1m
            properties:
              command: /bin/echo {{ .data.v }}
        """
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(
        write_machine(tmp_path / "nul", manifest), clock=clock, recorder=recorder
    )
    machine.data.put("v", "a\x00b")
    with caplog.at_level(logging.ERROR):
        async with running(machine):
            await clock.advance(60)
            await wait_until(lambda: machine.state == "broken", 5, "the error outcome")
    crashed = [r for r in caplog.records if r.exc_info]
    print(f"NUL in an argument: outcomes {recorder.outcomes('job')}, {len(crashed)} tracebacks")
    assert not crashed
    assert recorder.outcomes("job") == ["error"] and machine.state == "broken"


KV_VICTIM = """\
name: kvvictim
version: 1.0.0
initial_state: run
transitions:
  - name: changed
    from: [run]
    destination: run2
  - name: again
    from: [run2]
    destination: run
watchers:
  - name: config
    type: kv
    success_transition: changed
    properties:
      bucket: CONFIG
      key: setting
      mode: watch
  - name: exec
    type: exec
    state_match: [run2]
    success_transition: again
    properties:
      command: ./argv.sh {{ lookup "data.CONFIG_setting" "none" }} {{ lookup "data.CONFIG_setting.v" "none" }}
"""


async def test_kv_values_stay_one_argument(agent_factory: Any) -> None:
    async with agent_factory(check_permissions=False) as run:
        kv = run.agent.node.service("kv")
        await kv.create_bucket("CONFIG")
        await kv.put("CONFIG", "setting", b"first")
        directory = write(run.store, "kvvictim", KV_VICTIM)
        (directory / "argv.sh").write_text(ARGV_SH)
        (directory / "argv.sh").chmod(0o755)
        await run.wait(lambda: run.entry_status("kvvictim") == "running", what="kv machine")
        machine = run.agent.store.find("kvvictim").machine
        machine.data.put("secret", "LEAKED")
        # The first value ("first") goes round once before the hostile ones.
        await run.wait(
            lambda: (directory / "argv.exec").exists() and machine.state == "run",
            timeout=10,
            what="the first round",
        )
        tried = 0
        for value in INJECTIONS[:16]:
            # Text that looks like a JSON object or array is parsed as one (an unparsable one
            # becomes empty, as in Choria): only plain text is expected back verbatim.
            stripped = value.strip(" \t\r\n")
            container = (stripped[:1], stripped[-1:]) in (("{", "}"), ("[", "]"))
            for payload, kind in (
                (value.encode(), "raw"),
                (json.dumps({"v": value}).encode(), "json"),
            ):
                (directory / "argv.exec").unlink(missing_ok=True)
                await kv.put("CONFIG", "setting", payload)
                await run.wait(lambda d=directory: (d / "argv.exec").exists(), timeout=10,
                               what=f"exec after kv put of {payload[:30]!r}")  # fmt: skip
                argv = recorded(directory, "exec")
                assert "LEAKED" not in "".join(argv)
                if kind == "json":  # the object (Go's map printing), then its field
                    assert argv[0].startswith("map[v:")
                    assert argv[1:] == ([value] if value else [])
                elif container:
                    assert len(argv) == 2 and argv[1] == "none"
                else:
                    assert argv == ([value] if value else []) + ["none"]
                await run.wait(lambda: machine.state == "run", what="back to run")
                tried += 1
        print(f"{tried} hostile kv values (raw and inside JSON) each reached exec as one argument")


# -- managed files -----------------------------------------------------------------------------

MANAGED = """\
name: files
version: 1.0.0
initial_state: run
transitions:
  - name: stop
    from: [run]
    destination: stopped
watchers:
  - name: managed
    type: file
    interval: 1m
    properties:
      path: {path}
      contents: "{{{{ .data.v }}}}"
      owner: root
      group: root
      mode: "0600"
"""


async def test_a_planted_symlink_at_a_managed_path_is_replaced_not_followed(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    target = tmp_path / "shared" / "managed.conf"
    target.parent.mkdir()
    directory = write_machine(tmp_path / "files", MANAGED.format(path=target))
    clock = FakeClock()
    machine = make_machine(directory, clock=clock)
    machine.data.put("v", "../../victim.conf {{ .data.x }}")
    # An attacker with write access to the directory plants a link to a file they want changed.
    target.symlink_to(victim)
    async with running(machine):
        await clock.advance(60)
        await wait_until(lambda: not target.is_symlink(), what="managed write")
    assert victim.read_text() == "precious\n"
    assert target.read_text() == "../../victim.conf {{ .data.x }}"
    assert oct(target.stat().st_mode & 0o7777) == "0o600"
    assert not list(target.parent.glob(".managed.conf.*.tmp"))
    print("managed file: a planted symlink was replaced by a regular file; its target untouched")


# -- archives ----------------------------------------------------------------------------------

_NAMES = st.sampled_from(
    ["a", "a/b", "a/../b", "../x", "/abs", "./a", "a//b", "a/./b", ".", "..", "", "a\\..\\b",
     "\u202e", "a" * 300, "/".join(["d"] * 200), "é/ü", "a\nb", "-rf", "~", "a/b/c/d/e"]
)  # fmt: skip
_TYPES = st.sampled_from(
    [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
     tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"Z"]
)  # fmt: skip


def tar_bytes(members: list[tuple[str, bytes, int, str, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, link, size in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.linkname = link
            data = b"x" * size if kind in (tarfile.REGTYPE, tarfile.CONTTYPE) else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def extract_bytes(tmp_path: Path, raw: bytes) -> tuple[str, list[str]]:
    """Extract ``raw`` (gzip) into a fresh directory; (outcome, paths created outside it)."""
    work = tmp_path / f"w{random.getrandbits(40)}"
    dest = work / "dest"
    dest.mkdir(parents=True)
    archive = work / "a.tgz"
    archive.write_bytes(raw)
    try:
        extract_tar_gz(archive, dest, max_files=50, max_total_bytes=1 << 20, max_file_bytes=1 << 19)
        outcome = "ok"
    except ExtractError as exc:
        outcome = f"refused: {str(exc)[:60]}"
    outside = [str(p) for p in work.iterdir() if p.name not in ("dest", "a.tgz")]
    outside += [str(p) for p in tmp_path.iterdir() if not p.name.startswith("w")]
    for path in dest.rglob("*"):
        assert not path.is_symlink(), path
        assert path.resolve().is_relative_to(dest.resolve()), path
        if path.is_file():
            assert path.stat().st_mode & 0o6000 == 0, path  # no setuid/setgid
    return outcome, outside


ARCHIVE_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


@ARCHIVE_SETTINGS
@given(
    st.lists(
        st.tuples(
            _NAMES,
            _TYPES,
            st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o7777, 0]),
            st.sampled_from(["", "/etc/passwd", "../x", "a", "a/b"]),
            st.sampled_from([0, 1, 1000, 600_000]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_random_member_lists_extract_safely_or_are_refused(
    tmp_path_factory: pytest.TempPathFactory, members: list[tuple[str, bytes, int, str, int]]
) -> None:
    try:
        raw = tar_bytes(members)
    except (ValueError, tarfile.TarError):
        return  # tarfile itself cannot write it
    outcome, outside = extract_bytes(tmp_path_factory.mktemp("x"), gzip.compress(raw))
    assert outside == [], (outcome, outside)


@ARCHIVE_SETTINGS
@given(st.data())
def test_corrupted_archives_are_refused_with_extract_errors(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    raw = bytearray(tar_bytes([("app", tarfile.DIRTYPE, 0o755, "", 0),
                               ("app/a.txt", tarfile.REGTYPE, 0o644, "", 3000)]))  # fmt: skip
    for _ in range(data.draw(st.integers(1, 20))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    packed = gzip.compress(bytes(raw))
    if data.draw(st.integers(0, 3)) == 0:  # corrupt the gzip stream too
        packed = packed[:10] + bytes(data.draw(st.binary(min_size=1, max_size=20))) + packed[30:]
    _, outside = extract_bytes(tmp_path_factory.mktemp("c"), packed)
    assert outside == []


# -- the HTTP API ------------------------------------------------------------------------------

TOKEN = "hostile-input-test-token-0123456789"


@contextlib.asynccontextmanager
async def token_agent(agent_factory: Any, tmp_path: Path) -> Any:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    async with agent_factory(
        **{"http.token_file": str(token_file), "http.require_token": True}
    ) as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        write(run.store, "other", LAMP.format(name="other"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        await run.wait(lambda: run.entry_status("other") == "running")
        yield run


async def test_tokens_are_checked_exactly(agent_factory: Any, tmp_path: Path) -> None:
    async with token_agent(agent_factory, tmp_path) as run:
        url = "/api/v1/machines/lamp/transition"
        cases: dict[str, tuple[dict[str, str], dict[str, str], int]] = {
            "none": ({}, {}, 401),
            "empty bearer": ({"Authorization": "Bearer"}, {}, 401),
            "wrong": ({"Authorization": "Bearer " + "x" * len(TOKEN)}, {}, 401),
            "prefix of the token": ({"Authorization": "Bearer " + TOKEN[:-1]}, {}, 401),
            "token plus a suffix": ({"Authorization": "Bearer " + TOKEN + "x"}, {}, 401),
            "basic scheme": ({"Authorization": "Basic " + TOKEN}, {}, 401),
            "no scheme": ({"Authorization": TOKEN}, {}, 401),
            "in the query string": ({}, {"token": TOKEN, "access_token": TOKEN}, 401),
            "as a cookie": ({"Cookie": f"token={TOKEN}"}, {}, 401),
            "lower-case scheme": ({"Authorization": "bearer " + TOKEN}, {}, 200),
            "the token": ({"Authorization": "Bearer " + TOKEN}, {}, 200),
        }
        for what, (headers, params, status) in cases.items():
            await run.agent.store.find("lamp").machine.transition("switch_off")
            response = await run.http.post(
                url, json={"transition": "switch_on"}, headers=headers, params=params
            )
            print(f"token {what}: {response.status_code}")
            assert response.status_code == status, (what, response.text)
            if status == 401:
                assert response.headers["www-authenticate"] == "Bearer"
                assert TOKEN not in response.text
        # Reads need no token.
        assert (await run.http.get("/api/v1/machines/lamp")).status_code == 200


TRAVERSALS = [
    "..", "%2e%2e", "%2E%2E", ".%2e", "%252e%252e", "..%2f..%2fetc", "..%252f..%252fetc",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%5c..%5cetc", "..%c0%af..%c0%afetc", "%c0%ae%c0%ae",
    "%ef%bc%8e%ef%bc%8e", "lamp%2f..%2fother", "lamp%00", "lamp%0a", "lamp%0d%0aX-Evil:%201",
    "%2fetc%2fpasswd", "lamp%3bother", "lamp%23", "lamp%3f", "lamp..", "...", "~root",
    "lamp%20", "%20lamp", "LAMP", "l%61mp",
]  # fmt: skip


async def test_traversal_and_injection_in_names(agent_factory: Any, tmp_path: Path) -> None:
    async with token_agent(agent_factory, tmp_path) as run:
        raw = httpx.AsyncClient(base_url=run.agent.http_url or "", timeout=10)
        statuses: dict[str, int] = {}
        try:
            for name in TRAVERSALS:
                for path in (f"/api/v1/machines/{name}", f"/api/v1/machines/{name}/history",
                             f"/choria/machine/switch/v1/{name}/check"):  # fmt: skip
                    # httpx would normalise "%2e%2e"; send the bytes as written.
                    response = await raw.send(httpx.Request("GET", run.agent.http_url + path))
                    statuses[path] = response.status_code
                    assert response.status_code in (200, 400, 404, 422), (path, response.text)
                    assert "root:" not in response.text  # never a file's contents
                    assert "x-evil" not in {k.lower() for k in response.headers}
                    if response.status_code == 200:
                        body = response.json()
                        # Only names that decode to a real machine name answer.
                        assert body.get("name", body.get("machine")) in ("lamp", "other"), path
                transition = await raw.send(
                    httpx.Request(
                        "POST",
                        f"{run.agent.http_url}/api/v1/machines/{name}/transition",
                        json={"transition": "switch_on"},
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    )
                )
                assert transition.status_code in (404, 409, 422, 200), transition.text
                if transition.status_code == 200:
                    assert name in ("l%61mp",)  # the only encoding of a real name
            # CR/LF in the transition name never reaches a header or a log line unquoted.
            injected = await raw.post(
                "/api/v1/machines/lamp/transition",
                json={"transition": "switch_on\r\nX-Evil: 1"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert injected.status_code == 422
            assert "x-evil" not in {k.lower() for k in injected.headers}
        finally:
            await raw.aclose()
        codes = sorted(set(statuses.values()))
        print(f"{len(statuses)} traversal/injection paths: statuses {codes}; no escape, no header")


async def test_sse_floods_are_bounded_and_the_agent_stays_responsive(
    agent_factory: Any,
) -> None:
    limit = 16
    async with agent_factory(**{"http.max_sse_clients": limit}) as run:
        write(run.store, "lamp", LAMP.format(name="lamp"))
        await run.wait(lambda: run.entry_status("lamp") == "running")
        host, port = run.agent.http_url.removeprefix("http://").split(":")
        request = f"GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        answers: dict[str, int] = {}
        try:
            # 100 clients that subscribe and then never read a byte.
            for _ in range(100):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(request)
                await writer.drain()
                streams.append((reader, writer))
            for reader, _ in streams:
                line = await asyncio.wait_for(reader.readline(), 10)
                code = line.split()[1].decode()
                answers[code] = answers.get(code, 0) + 1
            assert answers == {"200": limit, "503": 100 - limit}
            assert run.agent.bus.subscriber_count == limit
            # Flood the subscribers with events: their queues are bounded, the agent answers.
            machine = run.agent.store.find("lamp").machine
            for _ in range(2000):
                await machine.transition("switch_on")
                await machine.transition("switch_off")
            started = time.monotonic()
            health = await run.http.get("/healthz")
            took = time.monotonic() - started
            assert health.status_code == 200
            assert_took(took, 30.0, "/healthz after an SSE flood of 4000 transitions")
            # Whatever the silent clients' sockets cannot take waits in bounded queues.
            queued = max(s.queue.qsize() for s in run.agent.bus._subscribers)
            dropped = sum(s.dropped for s in run.agent.bus._subscribers)
            assert queued <= run.agent.bus.queue_size
        finally:
            for _, writer in streams:
                writer.close()
        await run.wait(lambda: run.agent.bus.subscriber_count == 0, timeout=10, what="unsubscribed")
        print(
            f"SSE flood: 100 silent clients -> {answers}; 4000 transitions later /healthz answered "
            f"in {took * 1000:.0f} ms; largest client queue {queued} (bound "
            f"{run.agent.bus.queue_size}), {dropped} events dropped for slow clients; all "
            "unsubscribed on disconnect"
        )


async def test_a_slowloris_flood_does_not_stop_the_api(agent_factory: Any) -> None:
    async with agent_factory() as run:
        host, port = run.agent.http_url.removeprefix("http://").split(":")
        sockets = []
        try:
            for _ in range(300):  # half a request each, never finished
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /api/v1/machines HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                sockets.append(writer)
            await asyncio.sleep(0.2)
            started = time.monotonic()
            health = await run.http.get("/healthz")
            took = time.monotonic() - started
        finally:
            for writer in sockets:
                writer.close()
        print(f"slowloris: 300 half-open requests, /healthz answered in {took * 1000:.0f} ms")
        assert health.status_code == 200
        assert_took(took, 5.0, "/healthz under 300 half-open requests")


def test_an_unauthenticated_huge_body_is_refused_before_it_is_buffered(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    agent = AgentProcess(
        tmp_path,
        env={
            "MACHINERY_HTTP__TOKEN_FILE": str(token_file),
            "MACHINERY_HTTP__REQUIRE_TOKEN": "true",
        },
    )
    agent.start()
    try:
        assert agent.process is not None
        before = rss_kib(agent.process.pid)
        chunk = b" " * (1 << 20)

        def body() -> Any:
            yield b'{"transition": "switch_on"'
            for _ in range(128):
                yield chunk
            yield b"}"

        response = httpx.post(
            agent.url + "/api/v1/machines/lamp/transition",
            content=body(),
            headers={"content-type": "application/json"},
            timeout=60,
        )
        grown = (rss_kib(agent.process.pid) - before) >> 10
        print(f"128 MiB body without a token: {response.status_code}, agent RSS +{grown} MiB")
        assert response.status_code in (401, 413)
        assert grown < 16
    finally:
        agent.kill()


async def test_api_answers_are_not_delayed_by_nagle() -> None:
    """h11 writes headers and body separately: without TCP_NODELAY on the accepted connection
    every answer waits ~40 ms for a delayed ACK. asyncio sets it only on connections accepted
    from a socket created as IPPROTO_TCP, which bind() must do."""
    from machinery.api.server import bind

    accepted: list[bool] = []

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.append(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
        writer.close()

    listening = bind("127.0.0.1", 0)
    server = await asyncio.start_server(connected, sock=listening)
    try:
        port = listening.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(200):
            if accepted:
                break
            await asyncio.sleep(0.01)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert accepted == [True]


# -- signed specifications ---------------------------------------------------------------------

KEY = keypair_from_seed(bytes(range(32)))
SUM = "a" * 64

MANAGER = """\
name: manager
version: 1.0.0
initial_state: MANAGE
transitions:
  - name: applied
    from: [MANAGE, APPLIED, BROKEN]
    destination: APPLIED
  - name: broken
    from: [MANAGE, APPLIED, BROKEN]
    destination: BROKEN
watchers:
  - name: manage
    type: machines
    interval: 1m
    state_match: [MANAGE, APPLIED, BROKEN]
    success_transition: applied
    fail_transition: broken
    properties:
      data_item: spec
      purge_unknown: true
      public_key: "{key}"
"""


def signed(names: list[str]) -> dict[str, str]:
    entries = [
        {"name": n, "source": f"https://repo.example.net/{n}.tgz", "checksum": SUM,
         "verify_checksum": SUM}
        for n in names
    ]  # fmt: skip
    return pack_specification(SpecKind.MACHINES, json.dumps(entries).encode(), KEY)


async def test_tampered_and_replayed_specifications(tmp_path: Path) -> None:
    store = tmp_path / "store"
    directory = write_machine(store / "manager", MANAGER.format(key=KEY.public_hex))
    clock = FakeClock()
    recorder = Recorder()
    machine = make_machine(directory, clock=clock, recorder=recorder)

    def managers() -> list[str]:
        return sorted(p.name for p in store.iterdir() if p.name.startswith("mm_"))

    async def publish(document: Any) -> None:
        # Checks do their file work in threads and a purge sleeps its grace period on the fake
        # clock: move the clock a second at a time until the check is done and things settle.
        before = machine.watchers[0].status.runs
        machine.data.put("spec", document)
        for step in range(600):
            await clock.advance(1)
            await asyncio.sleep(0.01)
            if machine.watchers[0].status.runs > before and step >= 5:
                break
        else:
            raise AssertionError("the specification was never checked")

    old = signed(["web", "legacy"])
    new = signed(["web"])
    async with running(machine):
        await wait_until(
            lambda: bool(machine.watchers) and machine.watchers[0].status.runs >= 1,
            timeout=30,
            what="the check at start",
        )
        await publish(old)
        assert managers() == ["mm_legacy", "mm_web"]
        await publish(new)
        assert managers() == ["mm_web"]
        # Tampered: the entries of "old" under the signature of "new" (and bit flips).
        before = managers()
        tampered = dict(new, machines=old["machines"])
        await publish(tampered)
        assert managers() == before
        assert machine.watchers[0].status.outcome == "error"
        flipped = dict(
            new, signature=("0" if new["signature"][0] != "0" else "1") + new["signature"][1:]
        )
        await publish(flipped)
        assert managers() == before
        # Replayed: the old, validly signed specification published again is refused (the node
        # remembers what it applied and what superseded it), and removed from data.
        await publish(old)
        replayed = managers()
        assert machine.watchers[0].status.outcome == "error"
        assert "spec" not in machine.data
        history = json.loads((directory / ".manage.applied.json").read_text())["applied"]
    print(
        "signed specs: tampered and bit-flipped ones changed nothing; a replayed old "
        f"specification was refused, managers stay {replayed} (the node remembers the "
        f"{len(history)} specifications it applied and refuses superseded ones; see "
        "docs/security.md)"
    )
    assert replayed == ["mm_web"]  # the legacy manager does not come back
    assert [r["superseded_at"] is None for r in history] == [False, True]


# -- what the store permission checks cover ----------------------------------------------------


async def test_a_world_writable_command_in_the_store_is_refused(agent_factory: Any) -> None:
    async with agent_factory() as run:
        directory = write(
            run.store, "lamp", LAMP.format(name="lamp").replace("/bin/true", "./check.sh")
        )
        (directory / "check.sh").write_text("#!/bin/sh\nexit 0\n")
        (directory / "check.sh").chmod(0o777)
        await run.wait(lambda: run.entry_status("lamp") in ("running", "refused"), what="loaded")
        print(f"machine running a world-writable ./check.sh: {run.entry_status('lamp')}")
        assert run.entry_status("lamp") == "refused"


async def test_a_token_file_readable_by_others_is_refused_or_warned(
    agent_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        try:
            async with agent_factory(**{"http.token_file": str(token_file)}):
                pass
        except Exception as exc:  # refusing to start is an acceptable answer too
            print(f"world-readable token file: the agent refused to start ({exc})")
            return
    warned = [r.getMessage() for r in caplog.records if "token" in r.getMessage().lower()]
    print(f"world-readable token file: warnings {warned}")
    assert warned
