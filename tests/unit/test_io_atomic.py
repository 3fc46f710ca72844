"""Unit tests of ntk/io/atomic.py: temporaries beside the target (owner-tagged names), cleaning of dead runs'
leftovers, atomic files and directories, write errors as one line, inputs refused as outputs."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

import pytest

from ntk.errors import NtkError
from ntk.io.atomic import (AtomicOutput, atomic_dir, atomic_path, check_writable_target, clean_leftovers,
                           is_closed_pipe, make_parent, refuse_inputs_as_outputs, replace_dir, same_file,
                           stream_label, temp_dir, temp_file, temp_prefix, writing)


def _names(d):
    return sorted(p.name for p in d.iterdir())


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# -- names and leftovers ----------------------------------------------------------------------------------------
def test_temp_prefix_names_target_kind_and_owner():
    pre = temp_prefix("/some/dir/out.bed", "parts")
    assert pre.startswith(f".out.bed.ntk-parts-{os.getpid()}@")
    assert pre.endswith("-") and "/" not in pre


def test_clean_leftovers_removes_only_dead_runs_of_this_host(tmp_path):
    mine = temp_prefix("out.bed")
    dead = mine.replace(f"-{os.getpid()}@", f"-{_dead_pid()}@")
    other_host = dead.split("@")[0] + "@another-host-"
    (tmp_path / (dead + "abc.tmp")).write_text("x")  # dead run, file
    (tmp_path / (dead.replace("-tmp-", "-parts-") + "def")).mkdir()  # dead run, directory
    (tmp_path / (dead.replace(".out.bed.", ".other.bed.") + "ghi")).write_text("x")  # dead run, other output
    (tmp_path / (mine + "live.tmp")).write_text("x")  # this process: alive
    (tmp_path / (other_host + "jkl")).write_text("x")  # another host: its pid means nothing here
    (tmp_path / ".out.bed.ntk-partial").mkdir()  # --resume state: never cleaned
    (tmp_path / "out.bed").write_text("x")
    removed = clean_leftovers(tmp_path, "out.bed")
    assert sorted(p.name for p in removed) == sorted([dead + "abc.tmp", dead.replace("-tmp-", "-parts-") + "def"])
    left = _names(tmp_path)
    assert dead.replace(".out.bed.", ".other.bed.") + "ghi" in left  # only beside 'out.bed' when a name is given
    removed = clean_leftovers(tmp_path)  # every output's
    assert [p.name for p in removed] == [dead.replace(".out.bed.", ".other.bed.") + "ghi"]
    assert sorted(_names(tmp_path)) == sorted([mine + "live.tmp", other_host + "jkl", ".out.bed.ntk-partial",
                                               "out.bed"])
    assert clean_leftovers(tmp_path / "missing-dir") == []


# -- pipes and write errors -------------------------------------------------------------------------------------
def test_is_closed_pipe():
    assert is_closed_pipe(BrokenPipeError())
    assert is_closed_pipe(OSError(errno.EPIPE, "Broken pipe"))
    assert is_closed_pipe(OSError("write failed (os error 32)"))
    assert not is_closed_pipe(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_closed_pipe(ValueError("x"))


def test_stream_label(tmp_path):
    assert stream_label(sys.stdout) == "stdout"
    with open(tmp_path / "f", "w") as f:
        assert stream_label(f) == str(tmp_path / "f")


def test_writing_turns_a_full_disk_into_one_line():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(NtkError, match=r"^out\.bw: cannot write \(No space left on device\)$"):
        with writing("out.bw"), open("/dev/full", "wb", buffering=0) as f:
            f.write(b"x" * 10)
    with pytest.raises(NtkError, match=r"^t: cannot write \(quota\)$"):
        with writing("t"):
            raise OSError("quota (os error 122)")  # Rust-style message (polars): the suffix is dropped
    with pytest.raises(BrokenPipeError):  # a closed pipe goes through (the CLI ends quietly)
        with writing("stdout"):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
    with pytest.raises(ValueError):  # not an OSError: unchanged
        with writing("x"):
            raise ValueError("other")


# -- parents, targets -------------------------------------------------------------------------------------------
def test_make_parent(tmp_path):
    assert make_parent(tmp_path / "a" / "b" / "out.bed") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NtkError, match=rf"^{tmp_path / 'file' / 'sub' / 'o.bed'}: cannot create the output: "
                                       rf"{tmp_path / 'file'} is a file, not a directory$"):
        make_parent(tmp_path / "file" / "sub" / "o.bed")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_make_parent_unwritable_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(NtkError, match=rf"^{d}: directory is not writable"):
            make_parent(d / "o.bed")
    finally:
        d.chmod(stat.S_IRWXU)


def test_check_writable_target(tmp_path):
    assert check_writable_target(tmp_path / "new" / "o.bed", force=False) == tmp_path / "new" / "o.bed"
    (tmp_path / "o.bed").write_text("x")
    with pytest.raises(NtkError, match=rf"^{tmp_path / 'o.bed'}: already exists \(use --force to overwrite\)$"):
        check_writable_target(tmp_path / "o.bed", force=False)
    check_writable_target(tmp_path / "o.bed", force=True)
    with pytest.raises(NtkError, match=rf"^{tmp_path / 'new'}: is a directory; give a file name$"):
        check_writable_target(tmp_path / "new", force=True)


def test_refuse_inputs_as_outputs(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text(">a\nA\n")
    link = tmp_path / "link.fa"
    link.symlink_to(fa)
    refuse_inputs_as_outputs([tmp_path / "out.bed", None, "-", ""], [fa, None, "-", tmp_path / "absent.fa"])
    with pytest.raises(NtkError, match=rf"^{link}: the output is the input {fa}; choose another output name$"):
        refuse_inputs_as_outputs([link], [fa])
    with pytest.raises(NtkError, match=r"the output is the input .*g\.fa\.fai"):  # its index, even not yet built
        refuse_inputs_as_outputs([tmp_path / "g.fa.fai"], [fa])
    with pytest.raises(NtkError, match=rf"^{tmp_path}: the output directory holds the input {fa}"):
        refuse_inputs_as_outputs([tmp_path], [fa])
    assert same_file(link, fa) and not same_file(fa, tmp_path / "absent")


# -- temporaries and atomic outputs -----------------------------------------------------------------------------
def test_temp_file_and_dir_are_beside_the_target_with_usual_permissions(tmp_path):
    f = temp_file(tmp_path / "sub" / "o.bed", "raw", ".raw")
    assert f.parent == tmp_path / "sub" and f.name.startswith(temp_prefix("o.bed", "raw")) and f.suffix == ".raw"
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~_umask()
    d = temp_dir(tmp_path / "o.bed", "parts")
    assert d.is_dir() and d.name.startswith(temp_prefix("o.bed", "parts"))
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~_umask()


def test_atomic_path_renames_on_success_and_removes_on_error(tmp_path):
    out = tmp_path / "o.txt"
    with atomic_path(out, suffix=".txt") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp.txt")
        tmp.write_text("new")
        assert not out.exists()
    assert out.read_text() == "new" and _names(tmp_path) == ["o.txt"]
    with pytest.raises(KeyboardInterrupt):  # any exception, also BaseException (signals)
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert out.read_text() == "new" and _names(tmp_path) == ["o.txt"]


def test_atomic_dir(tmp_path):
    out = tmp_path / "outdir"
    with atomic_dir(out) as d:
        (d / "a.bw").write_text("1")
        assert not out.exists()
    assert _names(out) == ["a.bw"]
    with pytest.raises(NtkError, match=rf"^{out}: output directory is not empty \(use --force to overwrite\)$"):
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, force=True) as d:
            (d / "b.bw").write_text("2")
            raise RuntimeError
    assert _names(out) == ["a.bw"] and _names(tmp_path) == ["outdir"]  # old output kept, temp removed
    with atomic_dir(out, force=True) as d:
        (d / "c.bw").write_text("3")
    assert _names(out) == ["c.bw"] and _names(tmp_path) == ["outdir"]  # replaced whole
    (tmp_path / "f").write_text("x")
    with pytest.raises(NtkError, match=rf"^{tmp_path / 'f'}: exists and is not a directory$"):
        with atomic_dir(tmp_path / "f"):
            pass


def test_replace_dir(tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    (new / "x").write_text("1")
    replace_dir(new, tmp_path / "dst")
    assert _names(tmp_path / "dst") == ["x"]
    new2 = tmp_path / "new2"
    new2.mkdir()
    replace_dir(new2, tmp_path / "dst")
    assert _names(tmp_path / "dst") == [] and _names(tmp_path) == ["dst"]


def test_atomic_output_protocol():
    calls = []

    class W(AtomicOutput):
        def close(self):
            calls.append("close")

        def abort(self):
            calls.append("abort")

    with W():
        pass
    with pytest.raises(LookupError):
        with W():
            raise LookupError
    assert calls == ["close", "abort"]
