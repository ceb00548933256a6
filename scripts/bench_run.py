#!/usr/bin/env python3
"""Whole-run benchmark of tflq against `cp` of the same files (run by scripts/bench.sh).

    python3 scripts/bench_run.py --tflq target/release/tflq --data bench-data [--runs 5]

Standard library only. For each case it runs the baseline (`cp`) and tflq alternately,
`--runs` times each, with the page cache warm and no dirty pages left over from the run
before (`sync` between runs, untimed), and prints the medians and their ratio.

Time: wall clock from fork to exit (`time.perf_counter` around `os.wait4`), and the user
and system CPU time the kernel charged to the process and the children it waited for. On a
shared machine the wall time of a two-thread program suffers more from other load than that
of single-threaded `cp`; the CPU times barely move, so they are printed too.

Memory: separate runs (so that polling does not steal a core from the timed runs), two ways:
  * peak RssAnon, polled from /proc/PID/status every ~1 ms: the memory tflq itself
    allocates, which is what the targets bound (the mapped input is page cache, not counted);
  * peak RSS (`ru_maxrss`, exact, kernel-kept) minus the input's size: an upper bound on
    the same thing, since the whole input is mapped and read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

MIB = 1 << 20


def run_timed(cmd: list[str], **kw) -> tuple[float, int, float, float]:
    """Runs `cmd`; returns wall seconds, exit code, and user and system CPU seconds (with
    the children it waited for)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, **kw)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, p.returncode, usage.ru_utime, usage.ru_stime


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def run_polled(cmd: list[str]) -> tuple[int, int, int]:
    """Runs `cmd` while polling its memory; returns exit code, peak RssAnon, peak RSS."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = {"RssAnon": 0}
    done = threading.Event()

    def poll():
        while not done.is_set():
            s = status_kib(p.pid)
            if s.get("RssAnon", 0) > peak["RssAnon"]:
                peak["RssAnon"] = s["RssAnon"]
            time.sleep(0.001)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    # wait4 reaps the child; the poller reads /proc until then (a zombie has no RSS lines).
    _, status, usage = os.wait4(p.pid, 0)
    done.set()
    t.join()
    return os.waitstatus_to_exitcode(status), peak["RssAnon"] * 1024, usage.ru_maxrss * 1024


def clear(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def settle() -> None:
    """Writes back the previous run's output so that no run pays for another's."""
    os.sync()


def warm(paths: list[str], reread: bool = False) -> None:
    """Brings `paths` into the page cache. With `reread`, each is first dropped from it and
    then read back, as from disk: the cache then holds it in large folios (on this kernel),
    which a process maps far more cheaply than the small folios a file keeps from being
    written (docs/bench.md)."""
    if reread:
        os.sync()
    for p in paths:
        with open(p, "rb") as f:
            if reread:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while f.read(16 * MIB):
                pass


def tree_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
    )


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def fmt_mib(x: int | None) -> str:
    return "-" if x is None else f"{x / MIB:.1f}"


class Case:
    """One comparison: a baseline and a contender over the same input."""

    def __init__(self, name, input_path, baseline, contender, output, note=""):
        self.name = name
        self.input = input_path
        self.baseline = baseline  # (label, argv)
        self.contender = contender  # (label, argv)
        self.output = output
        self.note = note
        # Polling sees one process: not the tflq processes under a shell loop.
        self.poll = contender[1][0] != "sh"
        self.times = {"base": [], "tflq": []}
        self.cpu = {"base": [], "tflq": []}
        self.user = {"base": [], "tflq": []}
        self.sys = {"base": [], "tflq": []}
        self.failed = None
        self.anon = self.rss = None
        self.out_size = None


def measure(cases: list[Case], runs: int, scratch: str, memory: bool, reread: bool) -> None:
    for c in cases:
        warm_list = (
            [c.input]
            if os.path.isfile(c.input)
            else [os.path.join(d, f) for d, _, fs in os.walk(c.input) for f in fs]
        )
        warm(warm_list, reread)
        # One untimed run of each first: on a fresh VM, the first touch of guest memory for
        # the output's pages is slow (it made a 1 GiB `cp` take 3 s instead of 0.3 s).
        for argv in (c.baseline[1], c.contender[1]):
            clear(c.output)
            clear(os.path.join(scratch, "cp"))
            settle()
            run_timed(argv)
        for i in range(runs):
            # Alternate which goes first, so that neither always follows the other.
            order = ["base", "tflq"] if i % 2 == 0 else ["tflq", "base"]
            for who in order:
                clear(c.output)
                clear(os.path.join(scratch, "cp"))
                settle()
                argv = c.baseline[1] if who == "base" else c.contender[1]
                t, code, user, system = run_timed(argv)
                if code != 0:
                    c.failed = f"{' '.join(argv)} exited {code}"
                    break
                c.times[who].append(t)
                c.cpu[who].append(user + system)
                c.user[who].append(user)
                c.sys[who].append(system)
            if c.failed:
                break
            print(
                f"  {c.name} run {i + 1}/{runs}: {c.baseline[0]} "
                f"{c.times['base'][-1]:.3f} s, {c.contender[0]} {c.times['tflq'][-1]:.3f} s",
                file=sys.stderr,
            )
        if not c.failed and memory:
            clear(c.output)
            settle()
            code, anon, rss = run_polled(c.contender[1])
            if code == 0:
                c.anon, c.rss = (anon if c.poll else None), rss
        if not c.failed and os.path.exists(c.output):
            c.out_size = tree_size(c.output)
        clear(c.output)
        clear(os.path.join(scratch, "cp"))


def table(cases: list[Case]) -> str:
    head = (
        "| case | input MiB | baseline | baseline s | tflq s | ratio | baseline user / sys s | "
        "tflq user / sys s | tflq peak RssAnon MiB | peak RSS - input MiB | output MiB |"
    )
    lines = [head, "|" + "---|" * 11]
    for c in cases:
        if c.failed:
            lines.append(f"| {c.name} | | | | | failed: {c.failed} | | | | | |")
            continue
        b = statistics.median(c.times["base"])
        t = statistics.median(c.times["tflq"])
        med = statistics.median
        bc = f"{fmt_s(med(c.user['base']))} / {fmt_s(med(c.sys['base']))}"
        tc = f"{fmt_s(med(c.user['tflq']))} / {fmt_s(med(c.sys['tflq']))}"
        size = tree_size(c.input)
        extra = None if c.rss is None else max(c.rss - (size if os.path.isfile(c.input) else 0), 0)
        lines.append(
            f"| {c.name} | {size / MIB:.1f} | {c.baseline[0]} | {fmt_s(b)} | {fmt_s(t)} "
            f"| {t / b:.2f} | {bc} | {tc} | {fmt_mib(c.anon)} | {fmt_mib(extra)} "
            f"| {fmt_mib(c.out_size)} |"
        )
    return "\n".join(lines)


def has_subcommand(tflq: str, name: str) -> bool:
    r = subprocess.run([tflq, name, "--help"], capture_output=True)
    return r.returncode == 0


def disk_rate(scratch: str) -> list:
    """(MiB, seconds) to write and fsync a file of 12 and 45 MiB (the outputs of mlp-50m and
    cnn-200m) in the scratch folder, medians of 5, the page cache flushed before each."""
    block = os.urandom(MIB)
    path = os.path.join(scratch, "disk-rate.bin")
    rates = []
    for mib in (12, 45):
        times = []
        for _ in range(5):
            os.sync()
            start = time.perf_counter()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            for _ in range(mib):
                os.write(fd, block)
            os.fsync(fd)
            os.close(fd)
            times.append(time.perf_counter() - start)
            os.unlink(path)
        rates.append((mib, statistics.median(times)))
    return rates


def quantize_has(tflq: str, option: str) -> bool:
    r = subprocess.run([tflq, "quantize", "--help"], capture_output=True, text=True)
    return option in r.stdout


def quantize_takes_dir(tflq: str) -> bool:
    r = subprocess.run([tflq, "quantize", "--help"], capture_output=True, text=True)
    return "DIR" in r.stdout or "directory" in r.stdout.lower() or "folder" in r.stdout.lower()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tflq", required=True, help="the tflq binary (a release build)")
    ap.add_argument("--data", required=True, help="folder made by bench_models.py build")
    ap.add_argument("--runs", type=int, default=5, help="alternating runs per case")
    ap.add_argument("--scratch", help="where outputs go (default DATA/out)")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    ap.add_argument(
        "--huge", action="store_true", help="also the 9 GiB model (bench_models.py --huge)"
    )
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument(
        "--reread",
        action="store_true",
        help="drop each input from the page cache and read it back before its case, so that "
        "it is cached as a file read from disk is, not as one just written",
    )
    ap.add_argument(
        "--google",
        help="a command (shell words) that quantizes IN to OUT with Google's quantizer, "
        "with {in} and {out} placeholders; timed against cp on the 1 GiB model",
    )
    args = ap.parse_args()

    tflq = os.path.abspath(args.tflq)
    data = os.path.abspath(args.data)
    scratch = os.path.abspath(args.scratch or os.path.join(data, "out"))
    os.makedirs(scratch, exist_ok=True)
    out = os.path.join(scratch, "q.tflite")
    cp_out = os.path.join(scratch, "cp")
    cases = []
    names = ["mlp-1g", "cnn-200m", "mlp-50m"]
    if args.huge:
        names.append("mlp-9g")

    def model_case(name: str, *flags: str) -> Case:
        """`tflq quantize [flags]` of bench model `name` against `cp` of it."""
        src = os.path.join(data, name + ".tflite")
        return Case(
            " ".join(["quantize", name, *flags]),
            src,
            ("cp", ["cp", src, cp_out]),
            ("tflq", [tflq, "quantize", "-q", *flags, src, "-o", out]),
            out,
        )

    for name in names:
        cases.append(model_case(name))

    if quantize_has(tflq, "--no-equalize"):
        # What the default's cross-layer equalization costs on the largest model.
        cases.append(model_case("mlp-1g", "--no-equalize"))

    small = os.path.join(data, "small")
    out_dir = os.path.join(scratch, "small-q")
    if quantize_takes_dir(tflq):
        argv = [tflq, "quantize", "-q", small, "-o", out_dir]
        note = "one batch run"
    else:
        # No batch mode in this build: one process per model, from a shell loop.
        script = (
            f'mkdir -p "{out_dir}" && for f in "{small}"/*.tflite; do '
            f'"{tflq}" quantize -q "$f" -o "{out_dir}/$(basename "$f")" || exit 1; done'
        )
        argv = ["sh", "-c", script]
        note = "shell loop, one tflq process per model (no batch mode in this build)"
    cases.append(
        Case("quantize small/ (100 models)", small, ("cp -r", ["cp", "-r", small, cp_out]),
             ("tflq", argv), out_dir, note)
    )

    if quantize_has(tflq, "--no-fsync"):
        # What making each output durable costs: the same runs, outputs named without waiting
        # for the disk (as cp does). The disk's own rate is printed below the table.
        for name in ["cnn-200m", "mlp-50m"]:
            cases.append(model_case(name, "--no-fsync"))
        cases.append(
            Case("quantize small/ --no-fsync", small, ("cp -r", ["cp", "-r", small, cp_out]),
                 ("tflq", [tflq, "quantize", "-q", "--no-fsync", small, "-o", out_dir]), out_dir,
                 "one batch run")
        )

    big = os.path.join(data, "mlp-1g.tflite")
    if has_subcommand(tflq, "report"):
        cases.append(
            Case(
                "report mlp-1g vs quantize",
                big,
                ("tflq quantize", [tflq, "quantize", "-q", big, "-o", out]),
                ("tflq report", [tflq, "report", big]),
                out,
            )
        )
    if args.google:
        gout = os.path.join(scratch, "google.tflite")
        words = [w.replace("{in}", big).replace("{out}", gout) for w in args.google.split()]
        cases.append(
            Case("Google ai-edge-quantizer mlp-1g", big, ("cp", ["cp", big, cp_out]),
                 ("google", words), gout)
        )
    if args.only:
        keep = [s.strip() for s in args.only.split(",")]
        cases = [c for c in cases if any(k in c.name for k in keep)]

    measure(cases, args.runs, scratch, not args.no_memory, args.reread)
    print()
    cached = "inputs read back into the page cache" if args.reread else "inputs as cached"
    print(f"tflq: {tflq}; {args.runs} alternating runs per case, medians; "
          f"{os.cpu_count()} CPUs; {cached}")
    print(table(cases))
    for c in cases:
        if c.note:
            print(f"* {c.name}: {c.note}")
    by_name = {c.name: c for c in cases if not c.failed}
    big_case = by_name.get("quantize mlp-1g")
    small_case = by_name.get("quantize small/ (100 models)")
    if big_case and small_case:
        rate = lambda c: tree_size(c.input) / statistics.median(c.times["tflq"])  # noqa: E731
        print(
            f"* throughput: mlp-1g {rate(big_case) / MIB:.0f} MiB/s, small/ "
            f"{rate(small_case) / MIB:.0f} MiB/s ({rate(small_case) / rate(big_case):.2f}x)"
        )
    for mib, secs in disk_rate(scratch):
        print(f"* disk: {mib} MiB written and fsynced in {secs * 1000:.0f} ms "
              f"({mib * MIB / secs / 1e6:.0f} MB/s, median of 5): the least a durable output "
              "of that size waits")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {
                        "case": c.name,
                        "times": c.times,
                        "cpu": c.cpu,
                        "user": c.user,
                        "sys": c.sys,
                        "peak_rss_anon": c.anon,
                        "peak_rss": c.rss,
                        "output_bytes": c.out_size,
                        "input_bytes": tree_size(c.input),
                        "failed": c.failed,
                    }
                    for c in cases
                ],
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
