"""Read a joblib/pickle file of numpy arrays (the JAX release of ChatNT, ``jax_params/params.joblib``) WITHOUT
executing anything from it, and write safetensors without holding the whole model in memory.

A pickle can call any importable function while it loads. This reader is a pure-Python ``pickle._Unpickler``
whose ``find_class`` resolves only a fixed list of names -- joblib's array record, ``numpy.dtype``, numpy's
ndarray/scalar reconstructors (checked: plain ``numpy.ndarray`` and non-object dtypes only) and
``collections.OrderedDict`` -- and refuses every other global (``os.system``, ``builtins.eval``, a jax array
reconstructor, ...) with :class:`UnsafePickleError` before anything is called. Plain containers (dict, list,
tuple, str, numbers) need no globals. Joblib's array records are replaced by the array bytes that follow
them in the file (16-byte alignment padding honoured); in an uncompressed file the arrays are memory-mapped
rather than read. Compressed joblib files (zlib, gzip, bz2, xz/lzma) are read through the standard library.
"""
from __future__ import annotations

import bz2
import collections
import gzip
import io
import json
import lzma
import os
import pickle
import zlib
from pathlib import Path

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for something other than arrays and plain containers."""


class _ZlibReader(io.RawIOBase):
    """Streaming reader for joblib's raw zlib files."""

    def __init__(self, f):
        self._f, self._d, self._buf = f, zlib.decompressobj(), b""

    def readable(self):
        return True

    def read(self, n=-1):
        while n < 0 or len(self._buf) < n:
            chunk = self._f.read(1 << 20)
            if not chunk:
                self._buf += self._d.flush()
                break
            self._buf += self._d.decompress(chunk)
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _fill(self) -> bool:
        chunk = self._f.read(1 << 20)
        if not chunk:
            tail = self._d.flush()
            self._buf += tail
            return bool(tail)
        self._buf += self._d.decompress(chunk)
        return True

    def readline(self, size=-1):
        while b"\n" not in self._buf and self._fill():
            pass
        i = self._buf.find(b"\n")
        i = len(self._buf) if i < 0 else i + 1
        out, self._buf = self._buf[:i], self._buf[i:]
        return out

    def close(self):
        self._f.close()
        super().close()


def _open(path: Path):
    """(file object, can memory-map) for a possibly compressed joblib file."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb"), False
    if head.startswith(b"BZh"):
        return bz2.open(path, "rb"), False
    if head.startswith(b"\xfd7zXZ") or head.startswith(b"\x5d\x00\x00"):
        return lzma.open(path, "rb"), False
    if head[:1] == b"\x78":  # zlib stream (joblib compress=True / 'zlib')
        return _ZlibReader(open(path, "rb")), False
    if head.startswith(b"\x04\x22\x4d\x18"):
        raise UnsafePickleError(f"{path}: lz4-compressed; decompress it first (joblib.load on a trusted machine "
                                "and joblib.dump without compression)")
    if head.startswith(b"ZF"):
        raise UnsafePickleError(f"{path}: pre-0.9 joblib format, not supported")
    return open(path, "rb"), True


class _ArrayRecord:
    """Stands in for ``joblib.numpy_pickle.NumpyArrayWrapper``: only holds the state the file gives it."""

    _FIELDS = {"subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes"}

    def __setstate__(self, state):
        if not isinstance(state, dict) or not set(state) <= self._FIELDS:
            what = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise UnsafePickleError(f"unexpected joblib array record fields {what}")
        self.__dict__.update(state)

    def read(self, f, path: Path | None):
        if self.__dict__.get("subclass", np.ndarray) is not np.ndarray:
            raise UnsafePickleError("array record of a numpy subclass")
        dtype = self.dtype
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UnsafePickleError("arrays of Python objects are refused (they are pickles themselves)")
        shape = tuple(int(s) for s in self.shape)
        order = self.__dict__.get("order", "C")
        if order not in ("C", "F"):
            raise UnsafePickleError(f"array order {order!r}")
        if self.__dict__.get("numpy_array_alignment_bytes") is not None:
            pad = f.read(1)
            if len(pad) != 1:
                raise pickle.UnpicklingError("truncated file (array padding)")
            if pad[0]:
                f.read(pad[0])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = count * dtype.itemsize
        if path is not None:  # uncompressed: map the bytes in place
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
            if offset + nbytes > size:
                raise pickle.UnpicklingError("truncated file (array data)")
            f.seek(offset + nbytes)
            if nbytes == 0:
                return np.zeros(shape, dtype=dtype, order=order)
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
        data = bytearray()
        while len(data) < nbytes:
            chunk = f.read(min(nbytes - len(data), 1 << 26))
            if not chunk:
                raise pickle.UnpicklingError("truncated file (array data)")
            data += chunk
        arr = np.frombuffer(bytes(data), dtype=dtype, count=count)
        return arr.reshape(shape[::-1]).T if order == "F" else arr.reshape(shape)


def _dtype(*args):
    d = np.dtype(*args)
    if d.hasobject:
        raise UnsafePickleError("object dtype refused")
    return d


def _reconstruct(subtype, shape, dtype_char):
    if subtype is not np.ndarray:
        raise UnsafePickleError("ndarray reconstruct of a subclass refused")
    return np.ndarray.__new__(np.ndarray, shape, dtype_char)


def _scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar of an object dtype refused")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _frombuffer(buf, dtype, shape, order):
    """numpy's protocol-5 array reconstructor, for plain bytes and non-object dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise UnsafePickleError("array buffer of an unexpected kind")
    if order not in ("C", "F"):
        raise UnsafePickleError(f"array order {order!r}")
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(tuple(int(s) for s in shape), order=order)


def _latin1(text, encoding="latin1"):
    """``_codecs.encode``, as protocol-2 pickles spell bytes; only str -> latin-1 bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


def _bytes(*args):
    """``bytes()`` as old protocols spell an empty bytes object; plain data only."""
    if not args:
        return b""
    if len(args) <= 2 and isinstance(args[0], (str, list, tuple)):
        return _latin1(*args) if isinstance(args[0], str) else bytes(int(x) for x in args[0])
    raise UnsafePickleError("bytes() with unexpected arguments")


def _mapping(*args):
    """Haiku's old FlatMapping, rebuilt as a dict from plain data only."""
    if len(args) == 1 and isinstance(args[0], (dict, list, tuple)):
        return dict(args[0])
    raise UnsafePickleError("unexpected FlatMapping arguments")


_ALLOWED = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayRecord,
    ("numpy", "dtype"): _dtype,
    ("numpy", "ndarray"): np.ndarray,  # only as a value (joblib's 'subclass' field); _reconstruct checks it
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
    ("builtins", "bytes"): _bytes,
    ("__builtin__", "bytes"): _bytes,
    ("haiku._src.data_structures", "FlatMapping"): _mapping,
    ("haiku.data_structures", "FlatMapping"): _mapping,
}


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: lets us hook BUILD like joblib does
    def __init__(self, f, path: Path | None):
        super().__init__(f)
        self._raw, self._path = f, path
        self.dispatch = dict(pickle._Unpickler.dispatch)
        self.dispatch[pickle.BUILD[0]] = RestrictedUnpickler._load_build

    def find_class(self, module, name):
        hit = _ALLOWED.get((module, name))
        if hit is None:
            raise UnsafePickleError(f"refusing to load global {module}.{name}: only numpy arrays and plain "
                                    "containers are accepted")
        return hit

    def _load_build(self):
        pickle._Unpickler.dispatch[pickle.BUILD[0]](self)
        top = self.stack[-1]
        if isinstance(top, _ArrayRecord):
            self.stack[-1] = top.read(self._raw, self._path)
        elif isinstance(top, np.ndarray) and top.dtype.hasobject:
            raise UnsafePickleError("object arrays are refused")


def load_arrays(path: str | os.PathLike) -> object:
    """Unpickle a joblib/pickle file allowing only arrays and plain containers (see module doc)."""
    path = Path(path)
    f, mappable = _open(path)
    try:
        return RestrictedUnpickler(f, path if mappable else None).load()
    finally:
        f.close()


def flatten_params(obj, sep: str = "/") -> dict[str, np.ndarray]:
    """Haiku params ``{module: {param: array}}`` (or an already flat dict) -> ``{"module/param": array}``."""
    if not isinstance(obj, dict):
        raise UnsafePickleError(f"expected a dictionary of parameters, found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}

    def walk(prefix, d):
        for k, v in d.items():
            if not isinstance(k, str):
                raise UnsafePickleError(f"non-string parameter key {k!r}")
            name = f"{prefix}{sep}{k}" if prefix else k
            if isinstance(v, dict):
                walk(name, v)
            elif isinstance(v, np.ndarray | np.generic):
                out[name] = np.asarray(v)
            else:
                raise UnsafePickleError(f"parameter {name!r} is a {type(v).__name__}, not an array")

    walk("", obj)
    return out


_ST_DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("float64"): "F64",
              np.dtype("int32"): "I32", np.dtype("int64"): "I64", np.dtype("int8"): "I8", np.dtype("uint8"): "U8",
              np.dtype("int16"): "I16", np.dtype("bool"): "BOOL"}


def write_safetensors(arrays: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None,
                      cast=None) -> None:
    """Write a safetensors file one tensor at a time (memory-mapped inputs stay on disk).

    ``cast``: optional numpy dtype every floating array is converted to while writing."""
    header: dict = {"__metadata__": dict(metadata or {})} if metadata else {}
    names = sorted(arrays)
    offset = 0
    plan = []
    for n in names:
        a = arrays[n]
        dt = np.dtype(cast) if cast is not None and a.dtype.kind == "f" else a.dtype.newbyteorder("=")
        if dt not in _ST_DTYPES:
            raise ValueError(f"{n}: dtype {a.dtype} has no safetensors equivalent")
        nbytes = int(np.prod(a.shape, dtype=np.int64)) * dt.itemsize
        header[n] = {"dtype": _ST_DTYPES[dt], "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
        plan.append((n, dt))
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for n, dt in plan:
            a = np.ascontiguousarray(arrays[n], dtype=dt.newbyteorder("<"))
            f.write(memoryview(a.reshape(-1)).cast("B") if a.size else b"")
