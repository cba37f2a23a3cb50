"""Mutation testing of the modules that guard correctness and safety (``make mutate``).

Each module listed in ``mutation/modules.toml`` is mutated by mutmut in a scratch copy of the
project (``.mutation/<module>/``), against only the test files mapped to it, with one worker.
The scores go to ``mutation/results.json`` and the table in ``docs/mutation.md``.

    python -m mutation                      every module
    python -m mutation core/ratelimit.py    some modules
    python -m mutation --check              validate the configuration only
    python -m mutation --list               the modules and their tests
    python -m mutation --report             rewrite docs/mutation.md from the last results
"""

from __future__ import annotations

import argparse
import sys

from mutation.config import ConfigError, load_config
from mutation.run import load_results, run_module, update_report, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutation", description=__doc__.split("\n")[0])
    parser.add_argument(
        "modules", nargs="*", help="modules to run (default: all), e.g. core/fsm.py"
    )
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--list", action="store_true", help="list modules and their tests")
    parser.add_argument(
        "--report", action="store_true", help="rewrite docs/mutation.md from the last results"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds allowed per module (default 3600)"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"mutation: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"mutation: configuration valid ({len(config.modules)} modules)")
        return 0
    if args.report:
        update_report(load_results())
        return 0
    if args.list:
        for module in config.modules.values():
            print(f"{module.path}: {' '.join(module.tests)}")
        return 0
    unknown = [name for name in args.modules if name not in config.modules]
    if unknown:
        print(f"mutation: not a configured module: {', '.join(unknown)}", file=sys.stderr)
        return 2
    selected = [config.modules[name] for name in args.modules or config.modules]
    failed = False
    for module in selected:
        try:
            result = run_module(module, timeout=args.timeout)
        except RuntimeError as exc:
            print(f"mutation: {module.path}: {exc}", file=sys.stderr)
            failed = True
            continue
        write_report(result)
        print(result.summary())
        failed = failed or not result.meets_target
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
