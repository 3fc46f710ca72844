"""How to hand segment's output chunks to writer processes (issue #19): a shared buffer (an unlinked file in
/dev/shm mapped by both sides, as ``io/track_outputs`` does) + a small pickled message, against sending the
chunk's bytes through a pipe. One chunk = 262,144 positions x F features float32 (the chunk TrackOutputs
flushes for <= 16 features). Reported per chunk: the sending thread's wall time and CPU time (what the model
thread competes with for the GIL/cores), and the receiver's time to have the values in its own array.

    python bench/track_transfer.py [--features 14] [--chunks 40]
"""
from __future__ import annotations

import argparse
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection

import numpy as np

CHILD = r"""
import os, pickle, struct, sys, time
import numpy as np
from multiprocessing.connection import Connection
cmd, ack, fd = Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False), int(sys.argv[3])
m = None
spent = 0.0
while True:
    msg = cmd.recv_bytes()
    t = time.perf_counter()
    if msg == b"end":
        ack.send_bytes(pickle.dumps(spent)); break
    if msg[:1] == b"S":  # shared buffer: (size, shape) follow
        size, n, f = pickle.loads(msg[1:])
        if m is None or m.size != size:
            m = np.memmap(os.fdopen(os.dup(fd), "rb"), dtype=np.uint8, mode="r", shape=(size,))
        vals = np.array(m[:n * f * 4].view(np.float32).reshape(n, f))
    else:  # the bytes themselves
        n, f = struct.unpack("<QQ", msg[1:17])
        vals = np.frombuffer(msg, np.float32, offset=17).reshape(n, f).copy()
    ack.send_bytes(b"ok")
    spent += time.perf_counter() - t
"""


def run(mode: str, features: int, chunks: int) -> dict:
    n = 262_144
    vals = np.random.default_rng(0).random((n, features), dtype=np.float32)
    f = tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    c_r, c_w = os.pipe()
    a_r, a_w = os.pipe()
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(c_r), str(a_w), str(f.fileno())],
                         pass_fds=[c_r, a_w, f.fileno()])
    os.close(c_r)
    os.close(a_w)
    cmd, ack = Connection(c_w, readable=False), Connection(a_r, writable=False)
    os.ftruncate(f.fileno(), vals.nbytes)
    mm = np.memmap(f, dtype=np.uint8, mode="r+", shape=(vals.nbytes,))
    wall = cpu = 0.0
    for _ in range(chunks):
        t, c = time.perf_counter(), time.thread_time()
        if mode == "shared":
            mm[:].view(np.float32).reshape(vals.shape)[...] = vals
            cmd.send_bytes(b"S" + pickle.dumps((vals.nbytes, n, features)))
        else:
            head = struct.pack("<QQ", n, features)
            cmd.send_bytes(b"P" + head + vals.tobytes())
        wall += time.perf_counter() - t
        cpu += time.thread_time() - c
        ack.recv_bytes()  # one chunk in flight: the same for both modes
    cmd.send_bytes(b"end")
    child = pickle.loads(ack.recv_bytes())
    p.wait()
    return {"mode": mode, "send_wall_ms": 1e3 * wall / chunks, "send_cpu_ms": 1e3 * cpu / chunks,
            "receive_ms": 1e3 * child / chunks, "mb_per_chunk": vals.nbytes / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=14)
    ap.add_argument("--chunks", type=int, default=40)
    args = ap.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for mode in ("shared", "pipe", "shared", "pipe"):
        r = run(mode, args.features, args.chunks)
        print(f"{r['mode']:7s} {r['mb_per_chunk']:.1f} MB/chunk: sender {r['send_wall_ms']:.2f} ms wall, "
              f"{r['send_cpu_ms']:.2f} ms CPU; receiver {r['receive_ms']:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
