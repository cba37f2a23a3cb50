#!/usr/bin/env python3
"""Run by the fleet rollout, not by the machine: waits for the canary gate to open.

    wait_for_gate.py [--agent URL] [--machine NAME] [--timeout SECONDS] [--every SECONDS]

Asks the canary's agent (GET /api/v1/machines/NAME) for the gate's state every few seconds and
exits 0 when it is `open` (go on with the rollout), 1 when it is `closed` (stop, and roll the
canary back), 2 when it does not decide within the timeout or the agent cannot be asked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request


def gate_state(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        document = json.load(response)
    state = document.get("state") if isinstance(document, dict) else None
    if not isinstance(state, str):
        raise ValueError(f"no state in the answer from {url}")
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="http://127.0.0.1:8347", help="the canary's agent")
    parser.add_argument("--machine", default="canary_gate")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between questions")
    args = parser.parse_args()
    url = f"{args.agent.rstrip('/')}/api/v1/machines/{urllib.parse.quote(args.machine, safe='')}"
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            state = gate_state(url)
        except (OSError, ValueError) as exc:
            print(f"cannot read the gate: {exc}", file=sys.stderr)
            return 2
        print(f"{args.machine} is {state}", flush=True)
        if state == "open":
            return 0
        if state == "closed":
            return 1
        if time.monotonic() + args.every > deadline:
            print(f"the gate did not decide within {args.timeout:g}s", file=sys.stderr)
            return 2
        time.sleep(max(args.every, 1.0))


if __name__ == "__main__":
    sys.exit(main())
