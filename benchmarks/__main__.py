"""Run every benchmark in turn: ``python -m benchmarks`` (or ``python3 dev.py bench``).

Each prints its figures with the machine; benchmarks/README.md keeps the latest ones.
"""

from __future__ import annotations

from benchmarks import (
    dispatch,
    ingest,
    keyset,
    limiter_cost,
    ratelimit,
    startup,
    state_cost,
    throughput,
    versus_script,
)


def main() -> None:
    for name, run in (
        ("startup", lambda: startup.main([])),
        ("throughput", lambda: throughput.main([])),
        ("dispatch overhead", lambda: dispatch.main([])),
        ("dispatch vs raw aiohttp", lambda: dispatch.main(["--sandbox"])),
        ("limiter cost", lambda: limiter_cost.main([])),
        ("journal cost: none, SQLite, Redis", lambda: state_cost.main([])),
        ("rate limits, 1 s windows", lambda: ratelimit.main(["--seconds", "20"])),
        ("rate-limit profiles", lambda: ratelimit.main(["--seconds", "20", "--profiles", "all"])),
        ("ingest, 1M rows", lambda: ingest.main(["--rows", "1000000"])),
        ("key sets, 1M keys", lambda: keyset.main(["--keys", "1000000"])),
        (
            "bulksend send vs the plain script, 400,000 rows",
            lambda: versus_script.main(["--rows", "400000", "--rounds", "1"]),
        ),
    ):
        print(f"\n== {name} ==", flush=True)
        run()


if __name__ == "__main__":
    main()
