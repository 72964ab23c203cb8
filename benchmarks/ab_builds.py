"""Two builds of mnv2_fused side by side: a converted mobilenet_v2's forward, stage by stage, in two
live processes that take turns (short rounds, a pause between), so that both meet the machine's
same spells; medians of the per-round ratios, this checkout's build over the other.

    python benchmarks/ab_builds.py OTHER_DIR [--batch 1] [--threads 2] [--rounds 60] [--runs 20] [--sessions 6]

OTHER_DIR holds the other build: its `mnv2_fused` package built in place (for instance a git
worktree of an earlier commit, then `python setup.py build_ext --inplace` there). Each process
imports its own package by its path, from a directory of its own. Both run with
MNV2_FUSED_CHAIN=full: the other process's turn must not look like another process keeping a core
busy, which would drop a thread for a while (see README, Other runtimes, and under load). Where the
two builds' forwards have different stages (one stage doing the work of two), the stages only one
build has are timed together against those only the other has.

The rounds are spread over --sessions pairs of processes, started afresh, in alternating order:
two processes of the same build read 0.95-1.03x apart, session by session (six sessions of 10
rounds, batch 1, a 2-core Xeon), so one session cannot tell a 3% change; the per-session medians
are printed, and their median is the figure to quote.
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCOPE = "mnv2_fused.mobilenet_v2_forward: "


def worker(batch: int, threads: int) -> None:
    """Answers each line on stdin (a number of forwards) with a JSON line: seconds per forward, whole
    and per stage."""
    import torch
    import torchvision

    from mnv2_fused import convert
    from mnv2_fused.bench.measure import scope_times
    from mnv2_fused.bench.models import randomize

    torch.set_num_threads(threads)
    net = convert(randomize(torchvision.models.mobilenet_v2(), seed=0).eval())
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _ in range(10):
            net(x)
        print("ready", flush=True)
        for line in sys.stdin:
            runs = int(line)
            times = collections.defaultdict(float)
            start = time.perf_counter()
            with scope_times(SCOPE) as scopes:
                for _ in range(runs):
                    net(x)
            times["forward"] = (time.perf_counter() - start) / runs
            for name, seconds, *_ in scopes:  # builds before the team's job times had two fields
                times[name[len(SCOPE):]] += seconds / runs
            print(json.dumps(times), flush=True)


def start_worker(root: Path, args: argparse.Namespace, cwd: str) -> subprocess.Popen:
    """A worker process importing the mnv2_fused package under `root`."""
    env = dict(os.environ, PYTHONPATH=str(root), MNV2_FUSED_CHAIN="full")
    cmd = [sys.executable, str(Path(__file__).resolve()), str(args.other), "--worker", "--batch", str(args.batch),
           "--threads", str(args.threads)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def quartiles(values: list) -> str:
    v = sorted(values)
    return f"{statistics.median(v):.3f} (quartiles {v[len(v) // 4]:.3f}-{v[3 * len(v) // 4]:.3f})"


def report(results: dict) -> None:
    """Per stage and for the whole forward: each build's median and the ratios' median; the stages
    of one build only, together, against those of the other build only."""
    print(f"{'stage':22s} {'this us':>9s} {'other us':>9s}  this / other")
    stages = {side: [k for k in results[side][0] if k != "forward"] for side in results}
    rows = [([n], [n]) for n in stages["this"] if n in stages["other"]]
    only = {side: [n for n in stages[side] if n not in stages[other]]
            for side, other in (("this", "other"), ("other", "this"))}
    if only["this"] or only["other"]:
        rows.append((only["this"], only["other"]))
    for this_names, other_names in rows + [(["forward"], ["forward"])]:
        this = [sum(r[n] for n in this_names) for r in results["this"]]
        other = [sum(r[n] for n in other_names) for r in results["other"]]
        name = " + ".join(this_names) if this_names == other_names else \
            f"{' + '.join(this_names) or '-'} / {' + '.join(other_names) or '-'}"
        ratios = quartiles([a / b for a, b in zip(this, other)]) if this_names and other_names else "-"
        print(f"{name:22s} {statistics.median(this) * 1e6:9.1f} {statistics.median(other) * 1e6:9.1f}  {ratios}")


def session_ratios(sessions: list) -> list:
    """Each session's median ratio of this build's forward to the other's."""
    return [statistics.median(a["forward"] / b["forward"] for a, b in zip(s["this"], s["other"])) for s in sessions]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("other", type=Path, help="directory holding the other build's mnv2_fused package")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=60, help="turns of each build, spread evenly over the sessions")
    p.add_argument("--runs", type=int, default=20, help="forwards per turn (a quarter of it at batch > 1)")
    p.add_argument("--sessions", type=int, default=6, help="pairs of processes the rounds are spread over")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.batch, args.threads)
    if not (args.other / "mnv2_fused").is_dir():
        sys.exit(f"{args.other} holds no mnv2_fused package")
    if args.sessions < 1 or args.rounds < args.sessions:
        p.error("--sessions must be at least 1 and at most --rounds")
    runs = args.runs if args.batch == 1 else max(3, args.runs // 4)
    roots = {"this": Path(__file__).resolve().parents[1], "other": args.other.resolve()}
    sessions = []
    # The processes started in one order, then the other, session by session: identical builds read
    # 1.02-1.03x apart in one session at batch 8.
    for session in range(args.sessions):
        order = ("this", "other") if session % 2 == 0 else ("other", "this")
        turns = args.rounds * (session + 1) // args.sessions - args.rounds * session // args.sessions
        sessions.append({side: [] for side in roots})
        with tempfile.TemporaryDirectory() as cwd:
            procs = {side: start_worker(roots[side], args, cwd) for side in order}
            for side, proc in procs.items():
                if proc.stdout.readline().strip() != "ready":
                    sys.exit(f"the {side} build's process failed to start")
            for r in range(turns):
                for side in order if r % 2 == 0 else order[::-1]:
                    procs[side].stdin.write(f"{runs}\n")
                    procs[side].stdin.flush()
                    sessions[-1][side].append(json.loads(procs[side].stdout.readline()))
                    time.sleep(0.05)  # the other process's threads go to sleep before this one's turn
            for proc in procs.values():
                proc.stdin.close()
                proc.wait()
        print(f"session {session + 1} of {args.sessions}: {turns} rounds", file=sys.stderr)
    print(f"batch {args.batch}, {args.threads} threads, {args.rounds} turns each of {runs} forwards in "
          f"{args.sessions} sessions; this build over {args.other} (below 1: this one faster)")
    report({side: [turn for s in sessions for turn in s[side]] for side in roots})
    per_session = session_ratios(sessions)
    print(f"forward per session: {' '.join(f'{r:.3f}' for r in per_session)}; "
          f"median of the sessions {statistics.median(per_session):.3f}")


if __name__ == "__main__":
    main()
