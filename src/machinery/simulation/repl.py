"""``machinery simulate``: step a machine through events by hand (or from a script).

Each command changes the simulated world or asks about the machine; after every change the
machine's state, the watchers active in it and the transitions available are shown.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from machinery.lang.duration import DurationError, format_go_duration, parse_duration
from machinery.simulation.engine import CommandOutcome, Simulation, SimulationError

__all__ = ["HELP", "run_repl"]

HELP = """\
commands:
  fire EVENT                 fire a transition (as the API would)
  advance DURATION           let time pass (10s, 5m, 2h, 1w)
  exec WATCHER EXIT [OUTPUT] what WATCHER's command does from now on
  file PATH write TEXT       write a file in the machine directory (touch PATH, rm PATH)
  touch PATH | rm PATH
  data KEY JSON              set a data value
  kv BUCKET KEY JSON         set a key-value entry (kv-del BUCKET KEY to delete)
  switch WATCHER on|off      operate an httpswitch
  neighbour MACHINE STATE [EVENT]  another machine's state (and event, for subscriptions)
  state | watchers | available | data | events | commands | help | quit
"""


async def run_repl(
    directory: Path,
    lines: Iterable[str],
    out: TextIO,
    *,
    facts: dict[str, Any] | None = None,
    prompt: Callable[[], None] | None = None,
) -> int:
    """Run commands from ``lines`` against a simulation of ``directory``; returns an exit code
    (1 if a command failed in a script)."""
    failures = 0
    async with Simulation.open(directory, facts=facts) as sim:
        _show(sim, out)
        if prompt:
            prompt()
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                if prompt:
                    prompt()
                continue
            try:
                words = shlex.split(line)
                if words[0] in ("quit", "exit"):
                    break
                changed = await _command(sim, words, out)
                if changed:
                    _show(sim, out)
            except (SimulationError, DurationError, ValueError, IndexError) as exc:
                print(f"error: {exc}", file=out)
                failures += 1
            if prompt:
                prompt()
    return 1 if failures else 0


async def _command(sim: Simulation, words: list[str], out: TextIO) -> bool:
    verb, args = words[0], words[1:]
    if verb == "help":
        print(HELP, file=out, end="")
    elif verb == "state":
        _show(sim, out)
    elif verb == "watchers":
        for watcher in sim.machine.watchers:
            active = "active" if sim.machine.should_watch(watcher.spec) else "inactive"
            print(
                f"  {watcher.name} ({watcher.type_name}) {active}, last: {watcher.status.outcome}",
                file=out,
            )
    elif verb == "available":
        print("  " + ", ".join(sim.machine.available_transitions()), file=out)
    elif verb == "data":
        if args:
            await sim.set_data({args[0]: json.loads(" ".join(args[1:]))})
            return True
        print(json.dumps(sim.machine.data.snapshot(), indent=2, sort_keys=True), file=out)
    elif verb == "events":
        for event in sim.events[-20:]:
            print(f"  {event.describe()}", file=out)
    elif verb == "commands":
        for command in sim.runner.commands[-20:]:
            print(f"  {command.watcher}: {shlex.join(command.argv)}", file=out)
    elif verb == "fire":
        valid = await sim.fire(args[0])
        print(f"  {args[0]}: {'fired' if valid else 'not valid in this state'}", file=out)
        return True
    elif verb == "advance":
        seconds = parse_duration(args[0])
        before = len(sim.events)
        await sim.advance(seconds)
        print(f"  advanced {format_go_duration(seconds)}", file=out)
        for event in sim.events[before:]:
            print(f"  {event.describe()}", file=out)
        return True
    elif verb == "exec":
        sim.script(args[0], CommandOutcome(int(args[1]), " ".join(args[2:])))
        print(f"  {args[0]} now exits {args[1]}", file=out)
    elif verb in ("file", "touch", "rm"):
        if verb == "file" and len(args) >= 3 and args[1] == "write":
            await sim.write_file(args[0], " ".join(args[2:]))
        elif verb == "touch":
            await sim.write_file(args[0])
        elif verb == "rm":
            await sim.write_file(args[0], remove=True)
        else:
            raise ValueError("file PATH write TEXT")
        return True
    elif verb == "kv":
        await sim.kv_put(args[0], args[1], json.loads(" ".join(args[2:])))
        return True
    elif verb == "kv-del":
        await sim.kv_delete(args[0], args[1])
        return True
    elif verb == "switch":
        state = await sim.switch(args[0], args[1] == "on")
        print(f"  switch {args[0]} is {'on' if state else 'off'}", file=out)
        return True
    elif verb == "neighbour":
        await sim.neighbour(args[0], args[1], args[2] if len(args) > 2 else None)
        return True
    else:
        raise ValueError(f"unknown command {verb!r} (try help)")
    return False


def _show(sim: Simulation, out: TextIO) -> None:
    machine = sim.machine
    active = [w.name for w in machine.watchers if machine.should_watch(w.spec)]
    print(
        f"[{format_go_duration(sim.clock.monotonic())}] {machine.name} is in {machine.state}",
        file=out,
    )
    print(f"  active watchers: {', '.join(active) or 'none'}", file=out)
    print(
        f"  available transitions: {', '.join(machine.available_transitions()) or 'none'}", file=out
    )
