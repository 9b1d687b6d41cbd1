"""How soon a replay of a large dump starts writing (issue 14): plan, then first write.

    python benchmarks/replay_first_write.py DUMP [--schedule writer] [--rounds 5] [--dir /dev/shm]

For each round: ``plan_for(DUMP)`` (the source is mapped, not read), then
``simulator.replay`` into a FileSink.  A first sink before the FileSink takes
the clock when its first batch arrives: the time from calling ``plan_for`` to
the first write's bytes reaching the consumer, which is a little later than
the write entering the ring.  Also printed: the planning time alone, the
planned writes per second and the whole replay.

Make a dump of the size you care about with, e.g., ``mdstream dump PID --full``
of a process with that much memory touched.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dump")
    p.add_argument("--schedule", default="writer", choices=["writer", "sequential", "shuffled"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    p.add_argument("--json", metavar="PATH", help="also write the rounds as JSON")
    args = p.parse_args(argv)
    directory = args.dir or os.path.dirname(os.path.abspath(args.dump))
    from mdstream.bench import measure_replay_start

    rounds = [measure_replay_start(args.dump, directory, args.schedule) for _ in range(args.rounds)]
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: planned {r['writes']:,.0f} writes in {r['plan_s'] * 1e3:.0f} ms "
              f"({r['writes'] / r['plan_s'] / 1e6:.1f} M writes/s); first write after {r['first_write_s'] * 1e3:.0f} ms; "
              f"whole replay of {r['bytes'] / 1e9:.2f} GB {r['replay_s']:.2f} s")
    med = {k: statistics.median(r[k] for r in rounds) for k in ("plan_s", "first_write_s", "replay_s")}
    print(f"median: plan {med['plan_s'] * 1e3:.0f} ms, first write {med['first_write_s'] * 1e3:.0f} ms, "
          f"replay {med['replay_s']:.2f} s ({args.schedule} schedule)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dump": os.path.abspath(args.dump), "schedule": args.schedule, "rounds": rounds,
                       "median": med}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
