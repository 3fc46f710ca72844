"""Segment/tracks run outputs: kept window parts, in genome order -> contiguous chunks -> one float32 BigWig per
feature, the segments BED (bgzip + tabix) and optionally one feature as bedGraph on a stream
(:class:`TrackOutputs`; used by ``pipelines/segment.py`` and ``pipelines/merge.py``).

Where the per-chunk work runs (``writers``; issue #19: with a fast accelerator, compressing 14 float32 BigWigs
with zoom summaries is the heaviest host work, and its numpy code holds the GIL the model thread needs):

- ``"process"``: the BigWigs and the segments BED are written by worker processes (:func:`_worker_main`). Each
  flushed chunk is copied once into a ring of shared buffers (anonymous temporary files in ``/dev/shm``, mapped
  by both sides; a small pickled message per chunk goes through a pipe); each worker copies out the columns it
  writes, acknowledges the buffer and writes them with the very same writer classes as in-process, so the files
  are byte-identical. The ring (``RING`` buffers) bounds how far the workers may lag. Workers import only
  ``ntk.io`` (not torch), start in ~0.1 s, ignore terminal signals (the parent stops them: ``abort``) and exit
  when the parent's pipe closes (the parent was killed); a worker that fails reports its exception, one that
  dies is reported as an ``NtkError`` naming it and its files, never a hang.
- ``"thread"``: in-process, as before: the BigWigs of different features are written in parallel threads when
  the machine has cores to spare (zlib releases the GIL).
- ``"auto"`` (default; environment ``NTK_TRACK_WRITERS`` overrides): processes when there is an output directory,
  at least 2 cores, a genome (sum of contig lengths) of at least ``AUTO_MIN_BP`` and at most
  ``AUTO_MAX_FEATURES`` features; otherwise threads (small jobs: starting processes would cost more than it
  hides; NTv3 tracks runs with hundreds of tracks hand over window-sized chunks that would need a ring of
  gigabytes). The ring lives in /dev/shm when it has room (twice the ring), else in the temporary directory;
  a chunk buffer that cannot grow there is an ``NtkError``, never a SIGBUS. Worker count: ``NTK_TRACK_WRITER_PROCESSES``, else
  one per output (BigWigs + segments BED) up to the cores left after the model and reader/writer threads
  (cores - 2, at least 1, per local torchrun rank), at most ``MAX_PROCESSES``.

The bedGraph stream stays in the calling process (it may be stdout).
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from ..errors import NtkError
from .segments import SegmentsBedWriter
from .tracks import DEFAULT_BEDGRAPH_DIGITS, BedGraphWriter, BigWigWriter

CHUNK = 1 << 18  # nt per contiguous chunk handed to the writers
WRITERS = ("auto", "process", "thread")
AUTO_MIN_BP = 2_000_000  # "auto" uses worker processes for genomes at least this large
AUTO_MAX_FEATURES = 64  # ... and at most this many outputs (NTv3 tracks: hundreds, in window-sized chunks)
MAX_PROCESSES = 8
RING = 4  # shared chunk buffers: how many chunks the workers may lag behind


def _cores() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # torchrun: ranks on this host share its cores
    return max(1, n // max(1, ranks))


def choose_writers(writers: str | None, out_dir: Path | None, chrom_sizes: list[tuple[str, int]],
                   n_features: int = 1) -> str:
    """``"process"`` or ``"thread"`` for a run (see the module docstring)."""
    w = (writers or os.environ.get("NTK_TRACK_WRITERS") or "auto").strip().lower()
    if w not in WRITERS:
        raise NtkError(f"track writers {w!r}: expected one of {', '.join(WRITERS)} (NTK_TRACK_WRITERS)")
    if out_dir is None:
        return "thread"  # bedGraph only: nothing to hand to workers
    if w == "auto":
        big = sum(int(n) for _, n in chrom_sizes) >= AUTO_MIN_BP
        return "process" if big and n_features <= AUTO_MAX_FEATURES and _cores() >= 2 else "thread"
    return w


class TrackOutputs:
    """Kept window parts -> contiguous chunks -> BigWig per feature, segments BED, optional bedGraph.

    ``add`` chunks in genome order, then ``close`` (or ``abort`` on failure: files are left for the caller's
    temporary directory to remove). ``writers``/``processes``: see the module docstring."""

    def __init__(self, out_dir: Path | None, chrom_sizes: list[tuple[str, int]], features: list[str],
                 threshold: float, min_length: int, bedgraph_index: int | None = None,
                 bedgraph_stream: BinaryIO | None = None, zoom_levels: int = 10, segments: bool = True,
                 merge_gap: int = 0, bedgraph_digits: int | None = DEFAULT_BEDGRAPH_DIGITS,
                 writers: str | None = None, processes: int | None = None):
        self.features = features
        self.bigwigs: list[BigWigWriter] = []
        self.segments: SegmentsBedWriter | _RemoteSegments | None = None
        self.bedgraph = BedGraphWriter(bedgraph_stream, bedgraph_digits) if bedgraph_index is not None else None
        self.bedgraph_index = bedgraph_index
        self._pool: ThreadPoolExecutor | None = None
        self._remote: _Workers | None = None
        self.writers = choose_writers(writers, out_dir, chrom_sizes, len(features))
        if out_dir is not None and self.writers == "process":
            seg = segments
            n = processes or int(os.environ.get("NTK_TRACK_WRITER_PROCESSES", "0") or 0) or \
                min(len(features) + int(seg), max(1, _cores() - 2), MAX_PROCESSES)
            self._remote = _Workers(Path(out_dir), chrom_sizes, features, threshold, min_length, zoom_levels, seg,
                                    merge_gap, n)
            if seg:
                self.segments = _RemoteSegments()
        elif out_dir is not None:
            self.bigwigs = [BigWigWriter(out_dir / f"{f}.bw", chrom_sizes, zoom_levels) for f in features]
            if segments:
                self.segments = SegmentsBedWriter(out_dir / "segments.bed.gz", features, threshold, min_length,
                                                  merge_gap)
            workers = min(len(self.bigwigs), (os.cpu_count() or 1) - 2)  # cores left after the model and reader
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ntk-bigwig") if workers > 1 else None
        self._parts: list[np.ndarray] = []
        # positions per flushed chunk: fewer when there are many outputs (NTv3 tracks: hundreds per species)
        self._chunk = max(1 << 12, CHUNK * 16 // max(16, len(features)))
        self._chrom: str | None = None
        self._start = self._end = 0
        self.bp_written = 0

    def add(self, chrom: str, start: int, values: np.ndarray) -> None:
        """Values [n, F] for positions start..start+n; calls come in genome order."""
        if self._parts and (chrom != self._chrom or start != self._end or self._end - self._start >= self._chunk):
            self.flush()
        if not self._parts:
            self._chrom, self._start, self._end = chrom, start, start
        self._parts.append(values)
        self._end += values.shape[0]

    def flush(self) -> None:
        if not self._parts:
            return
        vals = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = []
        chrom, start = self._chrom, self._start
        if self._remote is not None:
            self._remote.add(chrom, start, vals)
            if self.bedgraph is not None:
                self.bedgraph.add(chrom, start, vals[:, self.bedgraph_index])
            self.bp_written += vals.shape[0]
            return
        pending = self._each_bigwig(lambda f, bw: bw.add(chrom, start, vals[:, f]))
        if self.segments is not None:
            self.segments.add(chrom, start, vals)
        if self.bedgraph is not None:
            self.bedgraph.add(chrom, start, vals[:, self.bedgraph_index])
        pending()
        self.bp_written += vals.shape[0]

    def _each_bigwig(self, fn: Callable[[int, BigWigWriter], None]) -> Callable[[], None]:
        """Run ``fn(feature_index, writer)`` for every BigWig (in the pool if any); returns a wait function
        that re-raises the first failure."""
        if self._pool is None:
            for f, bw in enumerate(self.bigwigs):
                fn(f, bw)
            return lambda: None
        futures = [self._pool.submit(fn, f, bw) for f, bw in enumerate(self.bigwigs)]

        def wait() -> None:
            for fu in futures:
                fu.result()
        return wait

    def close(self) -> None:
        self.flush()
        if self._remote is not None:
            info = self._remote.close()
            if isinstance(self.segments, _RemoteSegments):
                self.segments.n_segments = info.get("n_segments", 0)
        else:
            self._each_bigwig(lambda f, bw: bw.close())()
            if self.segments is not None:
                self.segments.close()
        if self.bedgraph is not None:
            self.bedgraph.flush()
        if self._pool is not None:
            self._pool.shutdown()

    def abort(self) -> None:
        if self._remote is not None:
            self._remote.abort()
            return
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for bw in self.bigwigs:
            bw.abort()
        if self.segments is not None:
            self.segments.abort()


class _RemoteSegments:
    """What callers read of the segments writer when it runs in a worker (``n_segments``, set at close)."""

    def __init__(self):
        self.n_segments = 0


# ---------------------------------------------------------------------------------------------------
# worker processes

_BOOT = """import sys, types
pkg = types.ModuleType("ntk"); pkg.__path__ = [sys.argv[1]]; sys.modules["ntk"] = pkg
from ntk.io.track_outputs import _worker_main
_worker_main(sys.argv[2:])
"""  # the bare ntk package: its __init__ imports torch, which a writer does not need


def _free_bytes(directory: str) -> int:
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _shm_dir(need: int) -> str | None:
    """/dev/shm (memory) when it is writable and has room for the ring (a container's default /dev/shm is
    64 MB), else the temporary directory."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and _free_bytes(shm) >= 2 * need:
        return shm
    return None


class _Slot:
    """One shared chunk buffer: an unlinked temporary file (in /dev/shm: memory) that workers inherit."""

    def __init__(self, directory: str | None):
        self.file = tempfile.TemporaryFile(dir=directory)
        self.directory = directory or tempfile.gettempdir()
        self.size = 0
        self.map: np.ndarray | None = None
        self.busy: set[int] = set()  # workers that have not copied the chunk out yet

    def put(self, vals: np.ndarray) -> int:
        need = max(vals.nbytes, 1)
        if need > self.size:
            grow = max(need, 2 * self.size)
            if _free_bytes(self.directory) < grow - self.size:  # a mapped file without room ends in SIGBUS
                raise NtkError(f"{self.directory}: no room for a {grow / 1e6:.0f} MB buffer of track values for "
                               "the writer processes; free space there or set NTK_TRACK_WRITERS=thread")
            self.map = None
            self.size = grow
            os.ftruncate(self.file.fileno(), self.size)
            self.map = np.memmap(self.file, dtype=np.uint8, mode="r+", shape=(self.size,))
        self.map[:vals.nbytes].view(vals.dtype).reshape(vals.shape)[...] = vals
        return self.size


class _Workers:
    """The parent's side of the writer processes: spawn, hand out chunks, close/abort, detect deaths."""

    def __init__(self, out_dir: Path, chrom_sizes, features, threshold, min_length, zoom_levels, segments,
                 merge_gap, n):
        n = max(1, min(int(n), len(features) + int(segments)))
        jobs: list[list[int]] = [[] for _ in range(n)]
        for f in range(len(features)):
            jobs[f % n].append(f)
        seg_worker = min(range(n), key=lambda k: (len(jobs[k]), -k)) if segments else -1
        chunk_bytes = max(1 << 12, CHUNK * 16 // max(16, len(features))) * len(features) * 4
        directory = _shm_dir(RING * chunk_bytes)
        self.slots = [_Slot(directory) for _ in range(RING)]
        self.out_dir = out_dir
        self.procs: list[subprocess.Popen] = []
        self.cmd: list[Connection] = []
        self.ack: list[Connection] = []
        self.files: list[list[str]] = []
        self._lock = threading.Lock()
        self._next = 0
        self._opened = False
        pkg = str(Path(__file__).resolve().parents[1])
        try:
            for k in range(n):
                c_r, c_w = os.pipe()
                a_r, a_w = os.pipe()
                fds = [s.file.fileno() for s in self.slots]
                spec = {"out_dir": str(out_dir), "chrom_sizes": [(c, int(s)) for c, s in chrom_sizes],
                        "features": list(features), "columns": jobs[k], "zoom_levels": zoom_levels,
                        "segments": k == seg_worker, "threshold": threshold, "min_length": min_length,
                        "merge_gap": merge_gap, "slot_fds": fds}
                p = subprocess.Popen([sys.executable, "-c", _BOOT, pkg, str(c_r), str(a_w)],
                                     pass_fds=[c_r, a_w, *fds], stdin=subprocess.DEVNULL, close_fds=True)
                # the parent's environment as it is (the writers' results do not depend on it: no BLAS calls)
                os.close(c_r)
                os.close(a_w)
                self.procs.append(p)
                self.cmd.append(Connection(c_w, readable=False))
                self.ack.append(Connection(a_r, writable=False))
                self.files.append([f"{features[f]}.bw" for f in jobs[k]] + (["segments.bed.gz"] if k == seg_worker
                                                                              else []))
                self._send(k, ("open", spec))
        except BaseException:
            self.abort()
            raise

    # -- messages ----------------------------------------------------------------------------------
    def _died(self, k: int) -> BaseException:
        """The exception a worker that stopped reported before exiting, else an NtkError naming it."""
        try:
            while self.ack[k].poll():
                msg = pickle.loads(self.ack[k].recv_bytes())
                if msg[0] == "error":
                    return msg[1]
        except (EOFError, OSError):
            pass
        p = self.procs[k]
        try:
            rc = p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        how = ("is not responding" if rc is None else
               f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}")
        return NtkError(f"track writer process {p.pid} (writing {', '.join(self.files[k])}) {how}; no output "
                        f"was written")

    def _send(self, k: int, msg) -> None:
        try:
            self.cmd[k].send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, ConnectionError, OSError):
            raise self._died(k) from None

    def _recv(self, k: int):
        try:
            msg = pickle.loads(self.ack[k].recv_bytes())
        except (EOFError, ConnectionError, OSError):
            raise self._died(k) from None
        if msg[0] == "error":
            raise msg[1]
        return msg

    def _expect(self, k: int, kind: str):
        while True:
            msg = self._recv(k)
            if msg[0] == kind:
                return msg
            if msg[0] == "free":
                self.slots[msg[1]].busy.discard(k)

    def _check_opened(self) -> None:
        """Each worker opened its files (a file that cannot be created is an error here); checked at the first
        chunk or close rather than at construction, so that the workers start while the model does."""
        if not self._opened:
            for k in range(len(self.procs)):
                self._expect(k, "opened")
            self._opened = True

    def _free_slot(self) -> _Slot:
        """The next ring buffer, once every worker has copied out the chunk it held."""
        slot = self.slots[self._next]
        while slot.busy:
            ready = wait([self.ack[k] for k in slot.busy])
            for conn in ready:
                k = self.ack.index(conn)
                msg = self._recv(k)
                if msg[0] == "free":
                    self.slots[msg[1]].busy.discard(k)
        return slot

    # -- the TrackOutputs side ---------------------------------------------------------------------
    def add(self, chrom: str, start: int, vals: np.ndarray) -> None:
        vals = np.ascontiguousarray(vals)
        with self._lock:
            self._check_opened()
            slot = self._free_slot()
            i = self._next
            slot.put(vals)
            self._next = (i + 1) % len(self.slots)
            slot.busy = set(range(len(self.procs)))
            for k in range(len(self.procs)):
                self._send(k, ("chunk", i, slot.size, vals.dtype.str, vals.shape, chrom, int(start)))

    def close(self) -> dict:
        info: dict = {}
        with self._lock:
            try:
                self._check_opened()
                for k in range(len(self.procs)):
                    self._send(k, ("close",))
                for k in range(len(self.procs)):  # the workers write their indexes and zooms in parallel
                    info.update(self._expect(k, "closed")[1])
                for p in self.procs:
                    p.wait()
            except BaseException:
                self._stop()
                raise
            finally:
                self._release()
        return info

    def abort(self) -> None:
        self._stop()
        self._release()

    def _stop(self) -> None:
        for k in range(len(self.cmd)):
            try:
                self.cmd[k].send_bytes(pickle.dumps(("abort",)))
            except (OSError, ValueError):
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _release(self) -> None:
        for c in self.cmd + self.ack:
            try:
                c.close()
            except OSError:
                pass
        self.cmd, self.ack = [], []
        for s in self.slots:
            s.map = None
            s.file.close()
        self.slots = []


def _worker_main(argv: list[str]) -> None:
    """A writer process: ``open`` (writers for its columns), ``chunk`` messages (copy out, acknowledge, write),
    then ``close`` (reply with the segment count) or ``abort``; EOF on the command pipe = the parent is gone."""
    for s in ("SIGINT", "SIGTERM", "SIGHUP"):  # the parent decides when to stop (abort), even on ^C
        if hasattr(signal, s):
            signal.signal(getattr(signal, s), signal.SIG_IGN)
    cmd = Connection(int(argv[0]), writable=False)
    ack = Connection(int(argv[1]), readable=False)
    bigwigs: list[tuple[int, BigWigWriter]] = []
    seg: SegmentsBedWriter | None = None
    maps: dict[int, np.ndarray] = {}
    fds: list[int] = []

    def reply(msg) -> None:
        ack.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def abort() -> None:
        for _, bw in bigwigs:
            bw.abort()
        if seg is not None:
            seg.abort()

    try:
        while True:
            try:
                msg = pickle.loads(cmd.recv_bytes())
            except (EOFError, OSError):
                abort()
                return
            kind = msg[0]
            if kind == "chunk":
                _, i, size, dtype, shape, chrom, start = msg
                m = maps.get(i)
                if m is None or m.size != size:
                    maps[i] = m = np.memmap(os.fdopen(os.dup(fds[i]), "rb"), dtype=np.uint8, mode="r",
                                            shape=(size,))
                dt = np.dtype(dtype)
                n = int(np.prod(shape))
                vals = m[:n * dt.itemsize].view(dt).reshape(shape)
                cols = [np.array(vals[:, f]) for f, _ in bigwigs]
                full = np.array(vals) if seg is not None else None
                reply(("free", i))
                for (_, bw), c in zip(bigwigs, cols):
                    bw.add(chrom, start, c)
                if seg is not None:
                    seg.add(chrom, start, full)
            elif kind == "open":
                spec = msg[1]
                fds = spec["slot_fds"]
                out = Path(spec["out_dir"])
                bigwigs = [(f, BigWigWriter(out / f"{spec['features'][f]}.bw", spec["chrom_sizes"],
                                            spec["zoom_levels"])) for f in spec["columns"]]
                if spec["segments"]:
                    seg = SegmentsBedWriter(out / "segments.bed.gz", spec["features"], spec["threshold"],
                                            spec["min_length"], spec["merge_gap"])
                reply(("opened",))
            elif kind == "close":
                for _, bw in bigwigs:
                    bw.close()
                if seg is not None:
                    seg.close()
                reply(("closed", {"n_segments": seg.n_segments} if seg is not None else {}))
                return
            else:  # abort
                abort()
                return
    except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
        abort()
        try:
            pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an exception that cannot travel: its text does
            e = NtkError(f"track writer: {type(e).__name__}: {e}")
        try:
            reply(("error", e))
        except OSError:
            pass
