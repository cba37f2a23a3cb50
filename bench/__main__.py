"""Run the benchmarks and write ``bench/results.md``.

python -m bench            # full sizes, targets checked
python -m bench --quick    # small sizes, to prove the benchmarks still run (used by tests)
python -m bench fsm exec   # only some scenarios
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.common import Result
from machinery.core.loop import install_child_watcher

SCENARIOS = {
    "fsm": "bench.fsm",
    "pipeline": "bench.pipeline",
    "exec": "bench.exec_overhead",
    "file": "bench.file_latency",
    "kv": "bench.kv_latency",
    "store": "bench.store_scale",
    "scale": "bench.scale",
    "simulation": "bench.simulation",
    "nats": "bench.nats_publish",
    "fleet": "bench.fleet",
    "footprint": "bench.footprint",
}


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def render(results: list[Result], quick: bool, elapsed: float) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"- machine: {machine_description()}",
        "- command: `python -m bench [SCENARIO...]` (`make bench` runs them all); each row keeps",
        "  the result of the last run that included it",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        "| scenario | result | target | met |",
        "|---|---|---|---|",
    ]
    for r in results:
        met = "n/a" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.scenario} | {r.figure} | {r.target} | {met} |")
    lines.append("")
    lines.append("Details:")
    lines.append("")
    for r in results:
        lines.append(f"- {r.scenario}: " + ", ".join(f"{k}={v}" for k, v in r.details.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "scenarios", nargs="*", choices=[*SCENARIOS, []], help="which to run (default: all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes; targets reported, not enforced"
    )
    parser.add_argument("--output", default=str(Path(__file__).parent / "results.md"))
    args = parser.parse_args(argv)
    names = args.scenarios or list(SCENARIOS)
    install_child_watcher()  # as every machinery entry point does
    started = time.monotonic()
    results = []
    for name in names:
        module = importlib.import_module(SCENARIOS[name])
        print(f"running {name}...", file=sys.stderr, flush=True)
        produced = module.run(args.quick)
        for result in produced if isinstance(produced, list) else [produced]:
            met = "n/a" if result.met is None else ("met" if result.met else "MISSED")
            print(
                f"  {result.scenario}: {result.figure} (target {result.target}: {met})", flush=True
            )
            results.append(result)
    if not args.quick:
        # Keep the other scenarios' last results, so running one scenario updates only its rows.
        store = Path(args.output).with_suffix(".json")
        merged: dict[str, dict[str, object]] = {}
        if store.exists():
            merged = json.loads(store.read_text())
        for result in results:
            merged[result.scenario] = {
                **asdict(result),
                "command": " ".join(sys.argv[1:]) or "(all)",
                "date": time.strftime("%Y-%m-%d %H:%M"),
            }
        store.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        ordered = [
            Result(**{k: v for k, v in value.items() if k in Result.__dataclass_fields__})
            for _, value in sorted(merged.items())
        ]
        Path(args.output).write_text(render(ordered, args.quick, time.monotonic() - started))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
