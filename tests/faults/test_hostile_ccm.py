"""Hostile input to the ccm_manifest watcher: a ccm that prints a gigantic or malformed summary,
one that never exits, manifest_file names with NUL, an inline manifest that is no JSON, and a
manifest file swapped for a link out of the machine while ccm starts.

Each ends as an ``error`` outcome with a clear last_error; the machine keeps running. Real
subprocesses (stand-in ccm scripts), real files, pytest-timeout bounds far above normal.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from machinery.watchers.ccm import parse_summary
from tests.support import make_machine, running, wait_until
from tests.watchers.test_ccm import STANDIN, file_manifest, machine_dir


def install_ccm(directory: Path, body: str) -> None:
    """Replace the machine's ccm with a Python script ``body``."""
    ccm = directory / "ccm"
    ccm.write_text(f"#!{sys.executable}\n{body}")
    ccm.chmod(0o755)


async def apply_once(directory: Path) -> str:
    """Run the machine into enforcing once; the watcher's last error when it fails."""
    machine = make_machine(directory)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state in ("converged", "drifted"), timeout=60)
        assert machine.state == "drifted"
        return machine.watchers[0].status.last_error or ""


# -- the summary ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_summary_of_many_blank_lines_is_read_in_linear_time() -> None:
    # \s* crossed lines: every line start rescanned the rest, 20,000 lines took 11 s and a
    # megabyte of them hours.
    output = "Manifest Run Summary\n" + " \n" * 200_000 + "Stable Resources: x\n"
    assert parse_summary(output) is None


def test_a_summary_count_of_thousands_of_digits_is_no_summary() -> None:
    # int() refused it with a ValueError that escaped the watcher.
    output = (
        "Manifest Run Summary\n"
        f"Total Resources: {'9' * 5000}\nStable Resources: 1\nTotal Errors: 0\n"
    )
    assert parse_summary(output) is None


@pytest.mark.timeout(120)
async def test_a_ccm_printing_a_gigantic_malformed_summary_is_an_error(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "manifest_file: manifest.json")
    (directory / "manifest.json").write_text(file_manifest(tmp_path / "motd", "x"))
    install_ccm(
        directory,
        "import sys\n"
        "sys.stdout.write('Manifest Run Summary\\n' + ' \\n' * 600000)\n"
        "sys.stdout.write('Total Resources: ' + '9' * 5000 + '\\n')\n",
    )
    error = await apply_once(directory)
    assert error == "could not get session summary: ccm printed no Manifest Run Summary"


@pytest.mark.timeout(120)
async def test_a_ccm_that_never_exits_is_killed_with_its_children(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, "manifest_file: manifest.json\ntimeout: 1s")
    (directory / "manifest.json").write_text(file_manifest(tmp_path / "motd", "x"))
    child_pid = directory / "child.pid"
    install_ccm(
        directory,
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '3600'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(3600)\n",
    )
    error = await apply_once(directory)
    assert error.startswith("could not apply manifest:")
    assert "timed out" in error or "timeout" in error
    pid = int(child_pid.read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (reaped by init later) counts as gone: it runs nothing.
        status = Path(f"/proc/{pid}/stat")
        return status.exists() and status.read_text().split(") ", 1)[1].startswith("Z")

    await wait_until(gone, what="ccm's child killed with its process group", timeout=30)


# -- the manifest --------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_manifest_file_name_with_nul_is_an_error_not_a_crash(tmp_path: Path) -> None:
    # Path.resolve raised ValueError (embedded null byte), which only OSError caught.
    directory = machine_dir(tmp_path, 'manifest_file: "manifest.json\\0x"')
    (directory / "manifest.json").write_text(file_manifest(tmp_path / "motd", "x"))
    error = await apply_once(directory)
    assert error.startswith("could not read manifest file 'manifest.json\\x00x'")
    assert not (tmp_path / "motd").exists()


@pytest.mark.timeout(60)
async def test_a_manifest_file_name_with_a_newline_cannot_forge_log_lines(tmp_path: Path) -> None:
    directory = machine_dir(tmp_path, 'manifest_file: "missing\\nERROR forged line"')
    error = await apply_once(directory)
    assert "\n" not in error
    assert error.startswith("could not read manifest file 'missing\\nERROR forged line'")


@pytest.mark.timeout(60)
async def test_an_inline_manifest_with_nan_is_an_error_not_a_manifest_ccm_cannot_read(
    tmp_path: Path,
) -> None:
    # NaN is no JSON: json.dumps wrote it anyway and ccm got a manifest it cannot read.
    directory = machine_dir(tmp_path, "manifest:\n  ccm:\n    limit: .nan")
    error = await apply_once(directory)
    assert error.startswith("the inline manifest cannot be written as JSON:")


@pytest.mark.timeout(60)
async def test_a_manifest_swapped_for_a_link_out_of_the_machine_is_not_applied(
    tmp_path: Path,
) -> None:
    # The checks passed on the real file; ccm read the path later, after an attacker had
    # replaced the file with a link to a manifest outside the machine. ccm now gets a copy
    # read through the checked descriptor.
    outside = tmp_path / "outside.json"
    outside.write_text(file_manifest(tmp_path / "pwned", "outside\n"))
    directory = machine_dir(tmp_path, "manifest_file: manifest.json")
    manifest = directory / "manifest.json"
    manifest.write_text(file_manifest(tmp_path / "motd", "inside\n"))
    install_ccm(
        directory,
        "import os, sys\n"
        f"manifest = {str(manifest)!r}\n"
        "os.unlink(manifest)\n"
        f"os.symlink({str(outside)!r}, manifest)\n"
        f"sys.argv[0] = {str(STANDIN)!r}\n"
        f"exec(compile(open({str(STANDIN)!r}).read(), {str(STANDIN)!r}, 'exec'))\n",
    )
    machine = make_machine(directory)
    async with running(machine):
        await machine.transition("enforce")
        await wait_until(lambda: machine.state in ("converged", "drifted"), timeout=30)
    assert not (tmp_path / "pwned").exists()
    assert (tmp_path / "motd").read_text() == "inside\n"
    assert manifest.is_symlink()  # the swap happened


@pytest.mark.timeout(60)
async def test_a_manifest_file_larger_than_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("machinery.watchers.ccm.MAX_MANIFEST_BYTES", 1024)
    directory = machine_dir(tmp_path, "manifest_file: manifest.json")
    (directory / "manifest.json").write_text(json.dumps({"ccm": {"pad": "x" * 2048}}))
    error = await apply_once(directory)
    assert (
        error
        == "could not prepare the manifest: manifest file manifest.json is larger than 1024 bytes"
    )
