"""Settings: defaults, file, environment, flags, and where each value came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from machinery.agent.config import ConfigError, load_settings, split_listen
from machinery.cli.main import app


def test_defaults_work_with_nothing_configured(tmp_path: Path) -> None:
    loaded = load_settings(environ={})
    settings = loaded.settings
    assert settings.http.listen == "127.0.0.1:8347" and settings.http.is_loopback
    assert settings.store is None and settings.nats.servers == []
    assert settings.rescan_interval == 10 and settings.rate_limit is True
    assert settings.identity
    assert all(source == "default" for _, _, source in loaded.describe())


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "machinery.toml"
    config.write_text(
        'identity = "from-file"\nrescan_interval = "30s"\n[http]\nlisten = "127.0.0.1:1111"\n'
    )
    loaded = load_settings(
        config,
        flags={"identity": "from-flag", "store": str(tmp_path)},
        environ={"MACHINERY_IDENTITY": "from-env", "MACHINERY_HTTP__LISTEN": "127.0.0.1:2222"},
    )
    s = loaded.settings
    assert (
        s.identity == "from-flag" and s.http.listen == "127.0.0.1:2222" and s.rescan_interval == 30
    )
    sources = {name: source for name, _, source in loaded.describe()}
    assert sources["identity"] == "flag"
    assert sources["http.listen"] == "environment"
    assert sources["rescan_interval"] == f"file {config}"
    assert sources["rate_limit"] == "default"


def test_config_file_from_the_environment_and_lists(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[nats]\nservers = ["nats://a:4222"]\n')
    loaded = load_settings(environ={"MACHINERY_CONFIG": str(config)})
    assert loaded.settings.nats.servers == ["nats://a:4222"]
    loaded = load_settings(environ={"MACHINERY_NATS__SERVERS": "nats://a:4222, nats://b:4222"})
    assert loaded.settings.nats.servers == ["nats://a:4222", "nats://b:4222"]
    loaded = load_settings(environ={"MACHINERY_NATS__SERVERS": '["nats://c:4222"]'})
    assert loaded.settings.nats.servers == ["nats://c:4222"]


def test_environment_section_as_json_under_its_single_settings() -> None:
    loaded = load_settings(
        environ={
            "machinery_http": '{"listen": "127.0.0.1:1111", "max_sse_clients": 3}',
            "MACHINERY_HTTP__LISTEN": "127.0.0.1:2222",
        }
    )
    assert loaded.settings.http.listen == "127.0.0.1:2222"
    assert loaded.settings.http.max_sse_clients == 3


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MACHINERY_HTTP__LISTEN": "8347"}, "must be HOST:PORT"),
        ({"MACHINERY_HTTP__LISTEN": "127.0.0.1:99999"}, "out of range"),
        ({"MACHINERY_RATE_LIMIT": "perhaps"}, "invalid setting rate_limit"),
        ({"MACHINERY_SETTLE_DELAY": "1x"}, "unknown unit 'x'"),
        ({"MACHINERY_STOER": "/x"}, "unknown setting in the environment: MACHINERY_STOER"),
        ({"MACHINERY_HISTORY__MAX_PER_MACHINE": "0"}, "invalid setting history.max_per_machine"),
        ({"MACHINERY_HTTP": "{listen"}, "MACHINERY_HTTP is not JSON"),
        ({"MACHINERY_SPOOL": "[1]"}, "MACHINERY_SPOOL must be a JSON object"),
        ({"MACHINERY_IDENTITY": "a", "MACHINERY_IDENTITY__X": "1"}, "invalid setting identity"),
        ({"MACHINERY_HTTP__NOPE": "1"}, "unknown setting 'http.nope'"),
    ],
)
def test_invalid_settings_are_explained(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_split_listen_forms() -> None:
    assert split_listen("[::1]:80") == ("::1", 80)
    assert split_listen(":80") == ("", 80)


def test_print_config_shows_values_and_sources(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["agent", "--print-config", "--store", str(tmp_path), "--identity", "n1"],
        env={"MACHINERY_NATS__PASSWORD": "hunter2", "MACHINERY_RESCAN_INTERVAL": "90s"},
    )
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert lines["identity"].split()[1:] == ["n1", "flag"]
    assert "1m30s" in lines["rescan_interval"] and "environment" in lines["rescan_interval"]
    assert "***" in lines["nats.password"] and "hunter2" not in result.output


def test_print_config_with_a_bad_setting_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["agent", "--print-config"], env={"MACHINERY_HTTP__LISTEN": "x"}
    )
    assert result.exit_code == 2
    assert "invalid setting http.listen" in result.output


def test_control_public_keys_from_environment_and_file(tmp_path: Path) -> None:
    a, b = "ab" * 32, "CD" * 32
    loaded = load_settings(environ={"MACHINERY_CONTROL__PUBLIC_KEYS": f"{a}, {b}"})
    assert loaded.settings.control.public_keys == [a, b.lower()]
    config = tmp_path / "machinery.toml"
    config.write_text(f'[control]\npublic_keys = ["{a}"]\n')
    assert load_settings(config, environ={}).settings.control.public_keys == [a]
    assert load_settings(environ={}).settings.control.public_keys == []


def test_control_public_keys_must_be_hex_keys() -> None:
    with pytest.raises(ConfigError, match="not an ed25519 public key"):
        load_settings(environ={"MACHINERY_CONTROL__PUBLIC_KEYS": "/etc/key.pub"})
