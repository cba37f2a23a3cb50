"""Every way the agent authenticates to NATS, against a real nats-server on loopback: user and
password, token, mutual TLS, and a credentials file (operator mode: operator, account and user
JWTs made here with nkeys). A right credential connects; a wrong or missing one does not, says
why in ``status()["last_error"]``, and the agent keeps trying without an exception escaping.
Passwords, tokens and seeds never show in ``status()``; ``machinery agent --print-config``
masks the password, the token and secrets written into server URLs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nkeys
import pytest

from machinery.agent.config import NatsSettings
from machinery.nats.connection import BrokerConnection, ConnectionState
from tests.natsserver import free_port, nats_server_binary, stop_server
from tests.support import wait_until

OPENSSL = "/usr/bin/openssl"
TIMEOUT = 10.0  # seconds to wait for any one condition

# -- a nats-server from a configuration file ---------------------------------------------------


class ConfiguredServer:
    """nats-server started with ``-c`` on a file this test writes (authorization, TLS, operator
    mode); ``configure`` rewrites the file and reloads it live (SIGHUP)."""

    def __init__(self, directory: Path, body: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.conf = directory / "server.conf"
        self.log = directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self._write(body)

    def url(self, scheme: str = "nats") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def _write(self, body: str) -> None:
        self.conf.write_text(f"listen: 127.0.0.1:{self.port}\n{body}\n")

    def start(self) -> ConfiguredServer:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.conf)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + TIMEOUT
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(self.log.read_text()[-2000:])
            time.sleep(0.02)

    def configure(self, body: str) -> None:
        """Replace the configuration and have the running server reload it."""
        assert self.process is not None
        self._write(body)
        reloads = self.log.read_text().count("Reloaded server configuration")
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while self.log.read_text().count("Reloaded server configuration") == reloads:
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.02)

    def stop(self) -> None:
        stop_server(self.process, 5)
        self.process = None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str], ConfiguredServer]]:
    """``serve(config)`` starts a nats-server; every one is stopped at the end of the test."""
    servers: list[ConfiguredServer] = []

    def start(body: str) -> ConfiguredServer:
        server = ConfiguredServer(tmp_path / f"server{len(servers)}", body)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


# -- brokers as the agent runs them ------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(*settings: NatsSettings) -> AsyncIterator[list[BrokerConnection]]:
    """One BrokerConnection per settings, each running in its own task, as the agent runs it.
    On exit none of the tasks may have ended by itself (no exception escaped ``run()``)."""
    brokers = [BrokerConnection(s, name="auth-test") for s in settings]
    tasks = [asyncio.ensure_future(b.run()) for b in brokers]
    try:
        yield brokers
        for broker, task in zip(brokers, tasks, strict=True):
            assert not task.done(), f"{broker.settings}: run() ended: {task}"
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def connects(broker: BrokerConnection) -> None:
    """The broker reaches CONNECTED and a round trip to the server works."""
    await wait_until(
        lambda: broker.state is ConnectionState.CONNECTED,
        TIMEOUT,
        f"connected (last error: {broker.last_error})",
    )
    assert broker.client is not None
    await asyncio.wait_for(broker.client.flush(), TIMEOUT)
    assert broker.status()["connected_url"] is not None


async def keeps_failing(broker: BrokerConnection, *expected: str) -> list[dict[str, Any]]:
    """The broker fails, ``status()["last_error"]`` names the cause (one of ``expected``, any
    case), and it tries again and fails again the same way: it neither connects nor gives up.
    Returns ``status()`` as it was after each failure."""

    def failed() -> bool:
        error = (broker.last_error or "").lower()
        return any(e.lower() in error for e in expected)

    statuses = []
    for attempt in ("first", "next"):
        await wait_until(
            failed, TIMEOUT, f"{attempt} failure with {expected}, got {broker.last_error!r}"
        )
        status = broker.status()
        assert status["state"] == ConnectionState.CONNECTING.value
        assert status["last_error"] == broker.last_error
        statuses.append(status)
        broker.last_error = None  # only a later attempt can set it again
    assert broker.client is None
    return statuses


def assert_hidden(shown: object, *secrets: str) -> None:
    """None of ``secrets`` appears in ``shown`` (a status or a list of them)."""
    text = json.dumps(shown)
    for secret in secrets:
        assert secret not in text, f"{secret!r} shown in {text}"


AUTH_FAILED = "authorization violation"

# -- user and password ---------------------------------------------------------------------------


async def test_user_and_password(serve: Callable[[str], ConfiguredServer]) -> None:
    server = serve('authorization { user: a, password: "b-secret" }')
    url = server.url()
    async with running(
        NatsSettings(servers=[url], user="a", password="b-secret"),
        NatsSettings(servers=[url], user="a", password="wrong-secret"),
        NatsSettings(servers=[url], user="nobody", password="b-secret"),
        NatsSettings(servers=[url]),
    ) as (good, wrong_password, wrong_user, anonymous):
        await connects(good)
        failures = await asyncio.gather(
            keeps_failing(wrong_password, AUTH_FAILED),
            keeps_failing(wrong_user, AUTH_FAILED),
            keeps_failing(anonymous, AUTH_FAILED),
        )
        assert_hidden([good.status(), *failures], "b-secret", "wrong-secret")


async def test_a_broker_that_rejects_the_password_is_retried_until_it_accepts_it(
    serve: Callable[[str], ConfiguredServer],
) -> None:
    """The agent does not give up on a misconfigured broker: once the broker's configuration is
    fixed (reloaded live), the same agent connection gets in."""
    server = serve('authorization { user: a, password: "old-secret" }')
    async with running(NatsSettings(servers=[server.url()], user="a", password="new-secret")) as (
        broker,
    ):
        await keeps_failing(broker, AUTH_FAILED)
        server.configure('authorization { user: a, password: "new-secret" }')
        await connects(broker)


async def test_status_hides_credentials_in_server_urls(
    serve: Callable[[str], ConfiguredServer],
) -> None:
    """nats-py also takes ``nats://user:password@host`` and ``nats://token@host``; status()
    shows such URLs without the secret."""
    server = serve('authorization { user: a, password: "url-secret" }')
    async with running(
        NatsSettings(servers=[f"nats://a:url-secret@127.0.0.1:{server.port}"]),
        NatsSettings(servers=[f"nats://url-token-secret@127.0.0.1:{server.port}"]),
    ) as (good, wrong):
        await connects(good)
        failures = await keeps_failing(wrong, AUTH_FAILED)
        assert good.status()["servers"] == [f"nats://***@127.0.0.1:{server.port}"]
        assert_hidden([good.status(), *failures], "url-secret", "url-token-secret")


# -- token ---------------------------------------------------------------------------------------


async def test_token(serve: Callable[[str], ConfiguredServer]) -> None:
    server = serve("authorization { token: s3cret }")
    url = server.url()
    async with running(
        NatsSettings(servers=[url], token="s3cret"),
        NatsSettings(servers=[url], token="not-it"),
        NatsSettings(servers=[url]),
    ) as (good, wrong, missing):
        await connects(good)
        failures = await asyncio.gather(
            keeps_failing(wrong, AUTH_FAILED), keeps_failing(missing, AUTH_FAILED)
        )
        assert_hidden([good.status(), *failures], "s3cret", "not-it")


# -- TLS -----------------------------------------------------------------------------------------


def openssl(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def make_cert(
    directory: Path, name: str, ca: tuple[Path, Path], *extensions: str
) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by ``ca``, with extra ``-addext`` extensions."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    added = [arg for extension in extensions for arg in ("-addext", extension)]
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "1", "-subj", f"/CN={name}",
        "-CA", ca[0], "-CAkey", ca[1],
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature",
        *added,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A throw-away CA with a server (127.0.0.1, localhost) and a client certificate, and an
    unrelated CA with a client certificate of its own."""
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = make_ca(directory, "ca")
    server = make_cert(
        directory,
        "server",
        ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "extendedKeyUsage=serverAuth",
    )
    client = make_cert(directory, "client", ca, "extendedKeyUsage=clientAuth")
    other_ca = make_ca(directory, "other-ca")
    stranger = make_cert(directory, "stranger", other_ca, "extendedKeyUsage=clientAuth")
    return {
        "ca": ca[0],
        "server_cert": server[0],
        "server_key": server[1],
        "client_cert": client[0],
        "client_key": client[1],
        "other_ca": other_ca[0],
        "stranger_cert": stranger[0],
        "stranger_key": stranger[1],
    }


async def test_mutual_tls(serve: Callable[[str], ConfiguredServer], pki: dict[str, Path]) -> None:
    server = serve(
        f"""tls {{
  cert_file: "{pki["server_cert"]}"
  key_file: "{pki["server_key"]}"
  ca_file: "{pki["ca"]}"
  verify: true
  timeout: 2
}}"""
    )
    url = server.url("tls")
    async with running(
        NatsSettings(
            servers=[url],
            tls_ca=pki["ca"],
            tls_cert=pki["client_cert"],
            tls_key=pki["client_key"],
        ),
        NatsSettings(servers=[url], tls_ca=pki["ca"]),
        NatsSettings(
            servers=[url],
            tls_ca=pki["other_ca"],
            tls_cert=pki["client_cert"],
            tls_key=pki["client_key"],
        ),
        NatsSettings(
            servers=[url],
            tls_ca=pki["ca"].with_name("missing.pem"),
            tls_cert=pki["client_cert"],
            tls_key=pki["client_key"],
        ),
        NatsSettings(
            servers=[url],
            tls_ca=pki["ca"],
            tls_cert=pki["stranger_cert"],
            tls_key=pki["stranger_key"],
        ),
    ) as (good, no_client_cert, wrong_ca, missing_ca, untrusted_client):
        await connects(good)
        assert good.status()["connected_url"] == url
        await asyncio.gather(
            # TLS 1.3: the server refuses the client after the handshake; depending on timing
            # nats-py reports the alert or only that the server hung up
            keeps_failing(no_client_cert, "certificate required", "connection lost"),
            keeps_failing(untrusted_client, "unknown ca", "bad certificate", "connection lost"),
            keeps_failing(wrong_ca, "certificate verify failed"),
            keeps_failing(missing_ca, "no such file"),
        )


# -- credentials file (operator mode) ------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def public(keys: nkeys.KeyPair) -> str:
    return str(keys.public_key.decode())


def seed(keys: nkeys.KeyPair) -> str:
    return str(keys.seed.decode())


def encode_jwt(
    issuer: nkeys.KeyPair,
    subject: str,
    name: str,
    nats: dict[str, object],
    *,
    expires: int | None = None,
) -> str:
    """A NATS JWT (v2): ``nats`` claims about ``subject``, issued and signed (ed25519) by
    ``issuer``. The ID (``jti``) is a hash of the other standard claims, as nats-io/jwt makes
    it (it uses SHA-512/256; the server only needs it unique)."""
    claims: dict[str, object] = {
        "iat": int(time.time()),
        "iss": public(issuer),
        "name": name,
        "sub": subject,
    }
    if expires is not None:
        claims["exp"] = expires
    claims["jti"] = base64.b32encode(
        hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    ).decode().rstrip("=")  # fmt: skip
    claims["nats"] = {**nats, "version": 2}
    header = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = b64url(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


def account_jwt(operator: nkeys.KeyPair, account: nkeys.KeyPair, name: str) -> str:
    limits = {**UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
              "leaf": -1}  # fmt: skip
    return encode_jwt(operator, public(account), name, {"type": "account", "limits": limits})


def user_jwt(
    account: nkeys.KeyPair, user: nkeys.KeyPair, name: str, *, expires: int | None = None
) -> str:
    return encode_jwt(
        account,
        public(user),
        name,
        {"type": "user", "pub": {}, "sub": {}, **UNLIMITED},
        expires=expires,
    )


def creds_file(path: Path, jwt: str, user: nkeys.KeyPair) -> Path:
    """The file ``nsc generate creds`` writes."""
    path.write_text(
        f"""-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed(user)}
------END USER NKEY SEED------

*************************************************************
"""
    )
    path.chmod(0o600)
    return path


@pytest.fixture
def operator_mode(
    serve: Callable[[str], ConfiguredServer],
) -> tuple[ConfiguredServer, nkeys.KeyPair]:
    """A server in operator mode: it trusts one operator, whose accounts (an application
    account and the system account) it has preloaded in its memory resolver. Returns the
    server and the application account's keys, to issue users with."""
    operator = new_keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    system = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    operator_jwt = encode_jwt(
        operator,
        public(operator),
        "test-operator",
        {"type": "operator", "system_account": public(system)},
    )
    server = serve(
        f"""operator: "{operator_jwt}"
system_account: {public(system)}
resolver: MEMORY
resolver_preload: {{
  {public(account)}: "{account_jwt(operator, account, "APP")}"
  {public(system)}: "{account_jwt(operator, system, "SYS")}"
}}"""
    )
    return server, account


async def test_credentials_file(
    operator_mode: tuple[ConfiguredServer, nkeys.KeyPair], tmp_path: Path
) -> None:
    server, account = operator_mode
    url = server.url()
    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    good = creds_file(tmp_path / "agent.creds", user_jwt(account, user, "agent"), user)
    # a user of an account the server does not know
    stranger = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    unknown_account = creds_file(
        tmp_path / "stranger.creds", user_jwt(stranger, user, "agent"), user
    )
    # the right JWT with another user's seed: the nonce signature does not match
    impostor = creds_file(
        tmp_path / "impostor.creds",
        user_jwt(account, user, "agent"),
        new_keypair(nkeys.PREFIX_BYTE_USER),
    )
    # a user JWT that expired a minute ago
    expired = creds_file(
        tmp_path / "expired.creds",
        user_jwt(account, user, "agent", expires=int(time.time()) - 60),
        user,
    )
    async with running(
        NatsSettings(servers=[url], credentials=good),
        NatsSettings(servers=[url], credentials=unknown_account),
        NatsSettings(servers=[url], credentials=impostor),
        NatsSettings(servers=[url], credentials=expired),
        NatsSettings(servers=[url]),
    ) as (agent, stranger_agent, impostor_agent, expired_agent, anonymous):
        await connects(agent)
        failures = await asyncio.gather(
            keeps_failing(stranger_agent, AUTH_FAILED),
            keeps_failing(impostor_agent, AUTH_FAILED),
            keeps_failing(expired_agent, AUTH_FAILED),
            keeps_failing(anonymous, AUTH_FAILED),
        )
        assert_hidden([agent.status(), *failures], seed(user))


async def test_a_missing_credentials_file_is_retried_until_it_appears(
    operator_mode: tuple[ConfiguredServer, nkeys.KeyPair], tmp_path: Path
) -> None:
    """Credentials provisioned after the agent started (say by configuration management) are
    picked up without a restart."""
    server, account = operator_mode
    path = tmp_path / "later.creds"
    async with running(NatsSettings(servers=[server.url()], credentials=path)) as (broker,):
        failures = await keeps_failing(broker, "no such file")
        assert str(path) in failures[-1]["last_error"]
        user = new_keypair(nkeys.PREFIX_BYTE_USER)
        creds_file(path, user_jwt(account, user, "agent"), user)
        await connects(broker)


async def test_a_plain_nkey_seed_file(
    serve: Callable[[str], ConfiguredServer], tmp_path: Path
) -> None:
    """``credentials`` naming a plain nkey seed file (``nk -gen user``, no JWT) against a server
    that knows the user's public nkey: the agent tells it from a ``.creds`` file and signs the
    server's challenge with the seed."""
    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    server = serve(f"authorization {{ users: [ {{ nkey: {public(user)} }} ] }}")
    path = tmp_path / "agent.nk"
    path.write_text(seed(user) + "\n")
    path.chmod(0o600)
    async with running(NatsSettings(servers=[server.url()], credentials=path)) as (broker,):
        await wait_until(
            lambda: broker.is_connected or broker.last_error is not None, TIMEOUT, "an outcome"
        )
        assert_hidden(broker.status(), seed(user))
        await connects(broker)


# -- secrets stay secret -------------------------------------------------------------------------


def test_print_config_masks_the_password_and_token(tmp_path: Path) -> None:
    """The password (here from the environment) and the token (here from the file) show as
    ``***`` with their source; the other settings as they are."""
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("MACHINERY_")}
    config = tmp_path / "machinery.toml"
    config.write_text('[nats]\nuser = "agent"\ntoken = "file-token-secret"\n')
    environment |= {
        "MACHINERY_CONFIG": str(config),
        "MACHINERY_NATS__PASSWORD": "env-password-secret",
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "machinery"),
            "agent",
            "--print-config",
            "--nats",
            "nats://127.0.0.1:1,nats://url-user:url-secret@127.0.0.1:2",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "env-password-secret" not in result.stdout + result.stderr
    assert "file-token-secret" not in result.stdout + result.stderr
    assert "url-secret" not in result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    assert rows["nats.password"] == ["***", "environment"]
    assert rows["nats.token"][:2] == ["***", "file"]
    assert rows["nats.user"][0] == "agent"
    assert rows["nats.servers"][:2] == ["['nats://127.0.0.1:1',", "'nats://***@127.0.0.1:2']"]


# -- the command line on a secured broker --------------------------------------------------------


def machinery(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("MACHINERY_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "machinery"), *args],
        env=environment | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_commands_take_the_broker_secrets_from_the_environment(
    serve: Callable[[str], ConfiguredServer], tmp_path: Path
) -> None:
    """``machinery governor``/``kv``/``watch --nats`` read the agent's MACHINERY_NATS__*
    variables: the token never goes on the command line."""
    store = tmp_path / "js"
    server = serve(f"authorization {{ token: s3cret }}\njetstream {{ store_dir: {store} }}")
    refused = machinery("governor", "add", "jobs", "2", "--nats", server.url())
    assert refused.returncode == 1
    assert "cannot connect to nats://127.0.0.1" in refused.stderr
    assert "authorization violation" in refused.stderr.lower()
    token = {"MACHINERY_NATS__TOKEN": "s3cret"}
    added = machinery("governor", "add", "jobs", "2", "--nats", server.url(), env=token)
    assert added.returncode == 0, added.stderr
    shown = machinery("governor", "view", "jobs", "--nats", server.url(), env=token)
    assert "capacity: 2" in shown.stdout
    assert "s3cret" not in refused.stderr + added.stdout + shown.stdout


def test_watch_follows_a_broker_that_wants_an_nkey(
    serve: Callable[[str], ConfiguredServer], tmp_path: Path
) -> None:
    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    server = serve(f"authorization {{ users: [ {{ nkey: {public(user)} }} ] }}")
    path = tmp_path / "watch.nk"
    path.write_text(seed(user) + "\n")
    path.chmod(0o600)
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("MACHINERY_")}
    watcher = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "machinery"),
            "watch",
            "--nats",
            server.url(),
            "--credentials",
            str(path),
            "--transitions",
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stderr is not None and watcher.stdout is not None
        # It says which subject it follows once it is subscribed.
        assert "choria.machine.transition" in watcher.stderr.readline()
        event = {
            "specversion": "1.0",
            "id": "0b4a4a5e-1f39-4a52-9f6c-1a6f3c1f0001",
            "source": "io.choria.machine",
            "type": "io.choria.machine.v1.transition",
            "subject": "web1",
            "datacontenttype": "application/json",
            "time": "2026-11-29T12:00:00Z",
            "data": {
                "protocol": "io.choria.machine.v1.transition",
                "identity": "web1",
                "id": "1",
                "version": "1.0.0",
                "timestamp": 1796040000,
                "machine": "lamp",
                "transition": "switch_on",
                "from_state": "off",
                "to_state": "on",
                "info": {},
            },
        }

        async def publish() -> None:
            client = await nats_connect(server.url(), path)
            await client.publish("choria.machine.transition", json.dumps(event).encode())
            await client.flush()
            await client.close()

        asyncio.run(publish())
        line = watcher.stdout.readline()
        assert "web1 lamp transitioned via event switch_on: off => on" in line
    finally:
        watcher.kill()
        watcher.wait()


async def nats_connect(url: str, seed_file: Path) -> Any:
    import nats

    return await nats.connect(url, nkeys_seed=str(seed_file))
