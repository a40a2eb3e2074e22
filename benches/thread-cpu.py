#!/usr/bin/env python3
"""CPU per thread group of running processes, from /proc, over one window.

    benches/thread-cpu.py --seconds 20 --process kafka=PID --process edge=PID ...

Reads utime+stime of every thread (/proc/PID/task/TID/stat, fields 14 and
15) at the start and the end of the window and prints, per process, the
CPU seconds and % of a core of each thread *group*: the thread name with
its digits and pool indices folded (`data-plane-kafka-request-handler-3`
and `-5` are one group), so a JVM's time splits into what it does (request
handlers, network threads, log flush, compaction, refresh, merges, GC...)
and a Rust process's into its runtime workers, librdkafka's threads and so
on. Threads born or gone during the window are counted for the part they
lived. `--json FILE` also writes the figures as JSON.

A cheap, always-available profile of where the engines' time goes: the
JVMs need no agent, and it runs next to a benchmark without disturbing it
(one read of /proc per thread at each end of the window). For a JVM the
full thread names come from `jcmd PID Thread.print` at the end of the
window (the kernel keeps only 15 characters).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def threads(pid):
    """{tid: (name, ticks)} for every thread of pid."""
    found = {}
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except FileNotFoundError:
        return found
    for tid in tids:
        try:
            with open(f"{base}/{tid}/stat") as stat:
                raw = stat.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # The name is in parentheses and may contain spaces and ')'.
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state): utime is field 14, stime 15.
        found[tid] = (name, int(fields[11]) + int(fields[12]))
    return found


def jvm_thread_names(pid):
    """{tid: full thread name} of a JVM, from `jcmd PID Thread.print` (the
    kernel keeps only 15 characters of a thread's name); {} elsewhere."""
    if not shutil.which("jcmd"):
        return {}
    try:
        dump = subprocess.run(
            ["jcmd", pid, "Thread.print"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    names = {}
    for match in re.finditer(r'^"(.*?)" .*? nid=(0x[0-9a-f]+|\d+)', dump, re.MULTILINE):
        nid = match.group(2)
        tid = int(nid, 16) if nid.startswith("0x") else int(nid)
        names[str(tid)] = match.group(1)
    return names


def group(name):
    """Folds pool indices and ids out of a thread name."""
    folded = re.sub(r"\d+", "N", name)
    return re.sub(r"(N[-_.:]?)+", "N", folded)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--process", action="append", default=[], metavar="NAME=PID")
    parser.add_argument("--top", type=int, default=8, help="thread groups shown per process")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    processes = []
    for spec in args.process:
        name, _, pid = spec.partition("=")
        if not pid.isdigit():
            parser.error(f"--process wants NAME=PID, got {spec!r}")
        processes.append((name, pid))
    if not processes:
        parser.error("name at least one --process NAME=PID")

    before = {pid: threads(pid) for _, pid in processes}
    started = time.monotonic()
    time.sleep(args.seconds)
    after = {pid: threads(pid) for _, pid in processes}
    wall = time.monotonic() - started
    full_names = {pid: jvm_thread_names(pid) for _, pid in processes}

    report = {"seconds": round(wall, 2), "processes": {}}
    for name, pid in processes:
        groups = {}
        for tid, (thread_name, ticks) in after[pid].items():
            start = before[pid].get(tid, (thread_name, 0))[1]
            used = max(0, ticks - start) / TICKS
            key = group(full_names[pid].get(tid, thread_name))
            groups[key] = groups.get(key, 0.0) + used
        total = sum(groups.values())
        ranked = sorted(groups.items(), key=lambda item: -item[1])
        report["processes"][name] = {
            "pid": int(pid),
            "cpu_seconds": round(total, 2),
            "percent_of_a_core": round(100 * total / wall, 1),
            "thread_groups": {key: round(value, 2) for key, value in ranked},
        }
        print(f"{name} (pid {pid}): {total:.2f} CPU s in {wall:.0f} s = {100 * total / wall:.1f}% of a core")
        for key, value in ranked[: args.top]:
            share = 100 * value / total if total else 0.0
            print(f"    {value:7.2f} s  {share:5.1f}%  {key}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
