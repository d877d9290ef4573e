#!/usr/bin/env python3
"""Measures what the capture adds to a traced program: N small socket writes, timed inside
the writer, (1) with no capture, (2) with `tracer capture` attached but the writer not
targeted, (3) with the writer targeted. The kernel programs' own run time (bpf_stats) is shown too:
the wall-clock numbers also carry the agent competing for CPU. Run as root with the path of the tracer binary:

  python3 tracer/tests/capture_cost.py target/debug/tracer [N]
"""
import os
import socket
import subprocess
import sys
import threading
import time

TRACER = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000

WRITER = r"""
import socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sys.stdin.readline()
start = time.perf_counter()
for _ in range(int(sys.argv[2])):
    sock.send(b"x" * 32)
print(time.perf_counter() - start, flush=True)
"""


def sink():
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=lambda c=conn: [None for _ in iter(lambda: c.recv(1 << 20), b"")],
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def run(port, mode):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(port), str(N)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tracer = None
    if mode != "none":
        pid = str(writer.pid if mode == "targeted" else 1)
        tracer = subprocess.Popen([TRACER, "capture", "--pid", pid], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        for line in tracer.stderr:
            if "tracing pid" in line or "waiting for target" in line:
                break
        time.sleep(0.5)
    writer.stdin.write("go\n")
    writer.stdin.flush()
    seconds = float(writer.stdout.readline())
    writer.wait()
    kernel_ns = 0
    if tracer:
        kernel_ns = bpf_run_time(tracer.pid)
        tracer.terminate()
        tracer.wait()
    return seconds, kernel_ns


def bpf_run_time(pid):
    """Nanoseconds all eBPF programs of `pid` ran, from their fds' fdinfo."""
    total = 0
    fddir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fddir):
        try:
            with open(os.path.join(fddir, fd)) as f:
                for line in f:
                    if line.startswith("run_time_ns:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def main():
    stats = "/proc/sys/kernel/bpf_stats_enabled"
    with open(stats) as f:
        saved = f.read().strip()
    with open(stats, "w") as f:
        f.write("1")
    try:
        port = sink()
        results = {mode: run(port, mode) for mode in ("none", "untargeted", "targeted")}
    finally:
        with open(stats, "w") as f:
            f.write(saved)
    base = results["none"][0]
    print(f"{N} writes of 32 bytes on a TCP socket")
    for mode, (seconds, kernel_ns) in results.items():
        print(f"  {mode:<11} {seconds:7.3f} s  {seconds / N * 1e9:7.0f} ns/write  "
              f"(+{(seconds - base) / N * 1e9:5.0f} ns wall, "
              f"eBPF {kernel_ns / N:5.0f} ns/write system-wide)")


if __name__ == "__main__":
    main()
