"""Saving and loading tapes (.npz): round trips, and hostile or broken files."""

from __future__ import annotations

import io
import math
import os
import pickle
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fasttape as ft
from fasttape.bench.families import random_local
from fasttape.ops import OP_BY_NAME, table_hash
from fasttape.serialize import save

KEYS = ("format_version", "op_table", "ops", "args", "consts", "outputs", "n_inputs")


def same_bits(a, b) -> bool:
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def _graph_tape() -> ft.Tape:
    g = ft.Graph()
    x, y, z = g.inputs(3)
    g.output(
        ft.sin(x) * y**3 + z**0.5 + ft.where(x > y, x, -0.0),
        ft.hypot(x, z) - 1.5,
        y,
        7.25,
    )
    return ft.compile(g)


def _special_consts_tape() -> ft.Tape:
    g = ft.Graph()
    x = g.input()
    g.output(ft.minimum(x, math.inf) + ft.where(x > 100.0, math.nan, -0.0) + x * 1e-310)
    return ft.compile(g)


TAPES = {
    "graph": _graph_tape,
    "random_local": lambda: random_local(1000, n_inputs=20, seed=5),
    "lean": lambda: random_local(300, n_inputs=5, seed=1, grad_mode="lean"),
    "no-instructions": lambda: ft.compile(ft.trace(lambda v: (v[1], 2.5), 2)),
    "special-consts": _special_consts_tape,
}


@pytest.fixture(params=list(TAPES))
def tape(request) -> ft.Tape:
    return TAPES[request.param]()


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "tape.npz"
    _graph_tape().save(path)
    return path


def saved_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_npz(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def assert_refused(path, match: str | None = None) -> ft.TapeFormatError:
    with pytest.raises(ft.TapeFormatError) as info:
        ft.load(path)
    if match is not None:
        assert match in str(info.value), str(info.value)
    return info.value


# ---------------------------------------------------------------------- round trips
def test_round_trip_is_bitwise(tape, tmp_path):
    path = tmp_path / "t.npz"
    tape.save(path)
    again = ft.load(path)
    for name in ("ops", "args", "consts", "outputs"):
        a, b = getattr(tape, name), getattr(again, name)
        assert a.dtype == b.dtype, name
        assert a.shape == b.shape and a.tobytes() == b.tobytes(), name
        assert not b.flags.writeable, name
    assert again.n_inputs == tape.n_inputs
    assert again.grad_mode == tape.grad_mode
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.uniform(0.1, 0.9, tape.n_inputs)
        assert same_bits(again.value(x), tape.value(x))
        for k in range(tape.n_outputs):
            v1, g1 = tape.value_and_grad(x, output=k)
            v2, g2 = again.value_and_grad(x, output=k)
            assert same_bits(v1, v2) and same_bits(g1, g2), k


def test_module_level_save_and_tape_save_write_the_same(tmp_path):
    tape = _graph_tape()
    tape.save(tmp_path / "a.npz")
    save(tape, tmp_path / "b.npz")
    a, b = saved_arrays(tmp_path / "a.npz"), saved_arrays(tmp_path / "b.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_saved_file_holds_the_documented_keys(good_file):
    a = saved_arrays(good_file)
    assert set(KEYS) <= set(a)
    assert int(a["format_version"]) == ft.FORMAT_VERSION
    assert str(a["op_table"]) == table_hash()
    assert a["n_inputs"].shape == () and a["n_inputs"].dtype.kind in "iu"
    for k, v in a.items():
        assert v.dtype != object, k


def test_path_with_npz_suffix(tmp_path):
    tape = _graph_tape()
    tape.save(tmp_path / "with.npz")
    assert (tmp_path / "with.npz").exists()
    assert not (tmp_path / "with.npz.npz").exists()
    assert ft.load(tmp_path / "with.npz").value([0.5, 0.6, 0.7]).tolist() == tape.value(
        [0.5, 0.6, 0.7]
    ).tolist()
    assert ft.load(str(tmp_path / "with.npz")).n_inputs == 3


def test_path_without_suffix_gets_npz_appended(tmp_path):
    tape = _graph_tape()
    tape.save(tmp_path / "plain")
    assert (tmp_path / "plain.npz").exists(), "numpy appends .npz when the suffix is missing"
    assert not (tmp_path / "plain").exists()
    again = ft.load(tmp_path / "plain.npz")
    assert np.array_equal(again.ops, tape.ops)
    tape.save(str(tmp_path / "other.tape"))
    assert (tmp_path / "other.tape.npz").exists()
    assert ft.load(str(tmp_path / "other.tape.npz")).n_inputs == 3


def test_save_to_an_open_file(tmp_path):
    tape = _graph_tape()
    buf = io.BytesIO()
    tape.save(buf)
    path = tmp_path / "from-buffer.npz"
    path.write_bytes(buf.getvalue())
    assert np.array_equal(ft.load(path).args, tape.args)


def test_load_grad_mode_override(tmp_path):
    tape = _graph_tape()
    tape.save(tmp_path / "s.npz")
    assert ft.load(tmp_path / "s.npz").grad_mode == "stored"
    assert ft.load(tmp_path / "s.npz", grad_mode="lean").grad_mode == "lean"
    tape.with_grad_mode("lean").save(tmp_path / "l.npz")
    assert ft.load(tmp_path / "l.npz").grad_mode == "lean"
    assert ft.load(tmp_path / "l.npz", grad_mode="stored").grad_mode == "stored"


def test_missing_grad_mode_key_means_stored_and_extra_keys_are_ignored(good_file, tmp_path):
    a = saved_arrays(good_file)
    del a["grad_mode"]
    a["comment"] = np.array("written by another tool")
    t = ft.load(write_npz(tmp_path / "x.npz", a))
    assert t.grad_mode == "stored"
    assert t.n_outputs == 4


def test_save_rejects_non_tapes(tmp_path):
    with pytest.raises(TypeError):
        save(ft.Graph(), tmp_path / "g.npz")
    with pytest.raises(TypeError):
        save({"ops": []}, tmp_path / "d.npz")


# ---------------------------------------------------------------------- missing files
@pytest.mark.parametrize("name", ["nothing.npz", "nothing", "no/such/dir/t.npz"])
def test_missing_file_raises_file_not_found(tmp_path, name):
    with pytest.raises(FileNotFoundError):
        ft.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        ft.load(str(tmp_path / name))


def test_tape_format_error_is_a_value_error():
    assert issubclass(ft.TapeFormatError, ValueError)


# ---------------------------------------------------------------------- broken files
@pytest.mark.parametrize("seed", range(12))
def test_random_bytes_are_refused(tmp_path, seed):
    rng = np.random.default_rng(seed)
    size = [0, 1, 10, 100, 1000, 5000][seed % 6]
    prefix = [b"", b"PK\x03\x04", b"PK\x05\x06"][seed % 3]
    path = tmp_path / "random.npz"
    path.write_bytes(prefix + rng.bytes(size))
    assert_refused(path)


def test_every_truncation_of_a_valid_file_is_refused(good_file, tmp_path):
    data = good_file.read_bytes()
    path = tmp_path / "cut.npz"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        try:
            ft.load(path)
        except ft.TapeFormatError:
            continue
        pytest.fail(f"a file truncated to {cut} of {len(data)} bytes was loaded")


@pytest.mark.parametrize("key", KEYS)
def test_missing_key_is_refused(good_file, tmp_path, key):
    a = saved_arrays(good_file)
    del a[key]
    err = assert_refused(write_npz(tmp_path / "m.npz", a))
    assert key in str(err), str(err)


def test_an_empty_npz_is_refused(tmp_path):
    assert_refused(write_npz(tmp_path / "empty.npz", {}), "missing")


def test_a_zip_that_is_not_an_npz_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    assert_refused(path, "missing")


@pytest.mark.parametrize(
    "version",
    [np.int64(3), np.int64(0), np.int64(-1), np.array("1"), np.float64(1.0), np.array([1]),
     np.uint8(3)],
    ids=["3", "0", "-1", "str", "float", "1-elem-array", "uint8-3"],
)
def test_wrong_format_version_is_refused(good_file, tmp_path, version):
    a = saved_arrays(good_file)
    a["format_version"] = version
    assert_refused(write_npz(tmp_path / "v.npz", a), "version")


@pytest.mark.parametrize(
    "table",
    [np.array("0123456789abcdef"), np.array(table_hash()[:-1]), np.array(table_hash().upper()),
     np.array([table_hash()]), np.array(table_hash().encode()), np.int64(5)],
    ids=["other", "short", "upper", "1-elem-array", "bytes", "int"],
)
def test_wrong_op_table_hash_is_refused(good_file, tmp_path, table):
    a = saved_arrays(good_file)
    a["op_table"] = table
    err = assert_refused(write_npz(tmp_path / "h.npz", a))
    assert "op table" in str(err), str(err)


@pytest.mark.parametrize("code", [200, 255, 254])
def test_invalid_op_code_is_refused(good_file, tmp_path, code):
    a = saved_arrays(good_file)
    a["ops"] = a["ops"].copy()
    a["ops"][2] = code
    err = assert_refused(write_npz(tmp_path / "o.npz", a))
    assert f"ops[2] = {code}" in str(err), str(err)


def test_args_pointing_forward_are_refused(good_file, tmp_path):
    a = saved_arrays(good_file)
    n_pre = int(a["n_inputs"]) + a["consts"].shape[0]
    args = a["args"].copy()
    args[0] = n_pre + 1  # instruction 0 reads instruction 1's slot
    a["args"] = args
    err = assert_refused(write_npz(tmp_path / "f.npz", a))
    assert "instruction 0" in str(err), str(err)
    args[0] = n_pre + 10_000  # past every slot
    a["args"] = args
    assert_refused(write_npz(tmp_path / "f2.npz", a), "args[0]")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("args", lambda a: a["args"][:-1], "args"),
        ("args", lambda a: np.concatenate([a["args"], [0]]), "args"),
        ("outputs", lambda a: np.zeros(0, np.int64), "outputs"),
        ("outputs", lambda a: np.array([10_000]), "outputs[0]"),
        ("ops", lambda a: a["ops"].astype(np.float64), "ops"),
        ("ops", lambda a: a["ops"][None, :], "ops"),
        ("consts", lambda a: np.array(["a", "b", "c"]), "consts"),
        ("consts", lambda a: a["consts"].astype(np.complex128), "consts"),
        ("grad_mode", lambda a: np.array("fast"), "grad_mode"),
        ("grad_mode", lambda a: np.array(["lean", "stored"]), "grad_mode"),
    ],
    ids=["args-short", "args-long", "no-outputs", "output-range", "ops-float", "ops-2d",
         "consts-str", "consts-complex", "grad-mode", "grad-mode-array"],
)
def test_invalid_arrays_are_refused(good_file, tmp_path, key, value, words):
    a = saved_arrays(good_file)
    a[key] = value(a)
    assert_refused(write_npz(tmp_path / "bad.npz", a), words)


class _Boom:
    """Unpickling this object writes a marker file: proof that pickle code ran."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle was loaded"))


@pytest.mark.parametrize("key", ["consts", "ops", "n_inputs", "n_params", "grad_mode",
                                 "format_version"])
def test_object_arrays_are_refused_without_unpickling(good_file, tmp_path, key):
    marker = tmp_path / "marker.txt"
    boom = _Boom()
    boom.marker = marker
    a = saved_arrays(good_file)
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = boom, 1.0
    a[key] = arr
    path = write_npz(tmp_path / "obj.npz", a)
    with np.load(path, allow_pickle=True) as data:  # sanity: the file does carry a pickle
        assert data[key].dtype == object
    marker.unlink()
    assert_refused(path)
    assert not marker.exists(), "ft.load unpickled an object array"


@pytest.mark.parametrize(
    "n_inputs",
    [np.array([3]), np.array([3, 3]), np.float64(3.0), np.array("3"), np.array(True),
     np.zeros((1, 1), np.int64)],
    ids=["1-elem-array", "2-elem-array", "float", "str", "bool", "2d"],
)
def test_n_inputs_that_is_not_an_integer_scalar_is_refused(good_file, tmp_path, n_inputs):
    a = saved_arrays(good_file)
    a["n_inputs"] = n_inputs
    assert_refused(write_npz(tmp_path / "n.npz", a), "n_inputs")


@pytest.mark.parametrize("n_inputs", [-1, 2, 4, 2**40])
def test_n_inputs_that_does_not_fit_the_arrays_is_refused(good_file, tmp_path, n_inputs):
    a = saved_arrays(good_file)
    a["n_inputs"] = np.int64(n_inputs)
    path = write_npz(tmp_path / "n.npz", a)
    try:
        t = ft.load(path)
    except ft.TapeFormatError:
        return
    # Accepted only if it is a valid tape (e.g. extra unused inputs); then it must evaluate.
    assert t.n_inputs == n_inputs and n_inputs < 100
    t.value(np.zeros(n_inputs))


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _header(text: bytes) -> bytes:
    text = text.ljust(118) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _zip_with(path: Path, good_file: Path, key: str, blob: bytes) -> Path:
    """A copy of ``good_file`` whose member ``key`` holds ``blob`` (CRCs are valid)."""
    with zipfile.ZipFile(good_file) as src:
        members = {n: src.read(n) for n in src.namelist()}
    members[key + ".npy"] = blob
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize(
    "blob",
    [
        _header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }garbage"),
        _header(b"{'descr': 'zz9', 'fortran_order': False, 'shape': (3,), }"),
        _header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }"),
        _header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000,), }") + bytes(16),
        _header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (10**13,), }"),
        _header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000000,), }"),
        _header(b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }") + b"\x80\x04N.",
        b"\x93NUMPY\x09\x00" + bytes(100),
        b"\x93NUMPY",
        _npy(np.zeros((2, 2), order="F")),
    ],
    ids=["trailing-garbage", "bad-descr", "negative-shape", "short-data", "expr-shape",
         "huge-shape", "object", "npy-version-9", "magic-only", "2d"],
)
@pytest.mark.parametrize("key", ["consts", "n_inputs", "format_version"])
def test_broken_npy_members_are_refused(good_file, tmp_path, key, blob):
    assert_refused(_zip_with(tmp_path / "b.npz", good_file, key, blob))


@pytest.mark.parametrize("key", ["ops", "args", "consts", "outputs"])
def test_member_that_is_not_npy_data_is_refused(good_file, tmp_path, key):
    assert_refused(_zip_with(tmp_path / "raw.npz", good_file, key, b"not an npy file at all"))


# ---------------------------------------------------------------------- known bugs
@pytest.mark.parametrize("name", ["array.npy", "array.npz"])
def test_npy_file_is_refused(tmp_path, name):
    path = tmp_path / name
    with open(path, "wb") as f:
        np.save(f, np.arange(3))
    assert_refused(path)


@pytest.mark.parametrize("key", ["format_version", "op_table", "n_inputs", "n_params"])
def test_scalar_member_that_is_not_npy_data_is_refused(good_file, tmp_path, key):
    assert_refused(_zip_with(tmp_path / "raw.npz", good_file, key, b"not an npy file at all"))


@pytest.mark.parametrize("key", ["consts", "n_inputs"])
def test_npy_header_with_unbalanced_brackets_is_refused(good_file, tmp_path, key):
    blob = _header(b"{'descr': '<f8', 'fortran_order': False, 'shape': (3,")
    assert_refused(_zip_with(tmp_path / "tok.npz", good_file, key, blob))


def _patch_zip_field(data: bytes, signature: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    i = out.find(signature)
    while i != -1:
        out[i + offset : i + offset + 2] = value.to_bytes(2, "little")
        i = out.find(signature, i + 4)
    return bytes(out)


@pytest.mark.parametrize("field", ["compression", "version"])
def test_unsupported_zip_features_are_refused(good_file, tmp_path, field):
    data = good_file.read_bytes()
    if field == "compression":  # method 99 (AES) in the central directory and local headers
        data = _patch_zip_field(data, b"PK\x01\x02", 10, 99)
        data = _patch_zip_field(data, b"PK\x03\x04", 8, 99)
    else:  # "version needed to extract" 9.9
        data = _patch_zip_field(data, b"PK\x01\x02", 6, 99)
    path = tmp_path / "z.npz"
    path.write_bytes(data)
    assert_refused(path)


def _load_never_crashes(path: Path) -> None:
    try:
        t = ft.load(path)
    except ft.TapeFormatError:
        return
    t.value(np.full(t.n_inputs, 0.5))
    for k in range(t.n_outputs):
        t.value_and_grad(np.full(t.n_inputs, 0.5), output=k)


def test_fuzz_byte_flips_anywhere_in_the_file(good_file, tmp_path):
    data = good_file.read_bytes()
    rng = np.random.default_rng(12345)
    path = tmp_path / "flip.npz"
    for _ in range(400):
        b = bytearray(data)
        b[int(rng.integers(len(b)))] = int(rng.integers(256))
        path.write_bytes(bytes(b))
        _load_never_crashes(path)


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as src:
        return {n: src.read(n) for n in src.namelist()}


def _load_with_member(path: Path, members: dict[str, bytes], name: str, blob: bytes) -> None:
    """Write ``members`` with ``name`` replaced by ``blob`` (valid CRC), then try to load."""
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, blob if n == name else d)
    _load_never_crashes(path)


def test_fuzz_byte_flips_in_npy_members(good_file, tmp_path):
    members = _members(good_file)
    rng = np.random.default_rng(54321)
    path = tmp_path / "member.npz"
    names = sorted(members)
    for _ in range(400):
        name = names[int(rng.integers(len(names)))]
        blob = bytearray(members[name])
        blob[int(rng.integers(min(len(blob), 128)))] = int(rng.integers(256))
        _load_with_member(path, members, name, bytes(blob))


def test_fuzz_byte_flips_in_npy_data_regions(good_file, tmp_path):
    """Flips past the .npy headers (array data only, CRC rewritten): refused or a valid tape."""
    members = _members(good_file)
    rng = np.random.default_rng(999)
    path = tmp_path / "data.npz"
    names = [n for n in sorted(members) if n.split(".")[0] in ("ops", "args", "outputs",
                                                                 "consts", "n_inputs")]
    for _ in range(300):
        name = names[int(rng.integers(len(names)))]
        blob = bytearray(members[name])
        header_len = 10 + int.from_bytes(blob[8:10], "little")
        if len(blob) <= header_len:
            continue
        j = header_len + int(rng.integers(len(blob) - header_len))
        blob[j] = int(rng.integers(256))
        _load_with_member(path, members, name, bytes(blob))


def test_renumbered_ops_with_a_forged_hash_are_still_validated(good_file, tmp_path):
    """A file whose op codes mean other ops (hash forged) is still checked structurally."""
    a = saved_arrays(good_file)
    ops = a["ops"].copy()
    ops[ops == OP_BY_NAME["sin"].code] = OP_BY_NAME["where"].code  # arity 1 -> 3
    a["ops"] = ops
    assert_refused(write_npz(tmp_path / "renum.npz", a), "instruction")


# ---------------------------------------------------------------------- atomic save
@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "interrupt"])
def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path, monkeypatch,
                                                                        error):
    """np.savez used to open (truncate) the target first: a save that failed half-way had
    already destroyed the previous tape."""
    path = tmp_path / "t.npz"
    _graph_tape().save(path)
    before = path.read_bytes()

    def failing_savez(file, **arrays):  # writes a little, then fails, as a full disk would
        if isinstance(file, (str, os.PathLike)):
            with open(file, "wb") as f:
                f.write(b"PK\x03\x04 half a tape")
        else:
            file.write(b"PK\x03\x04 half a tape")
        raise error

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(type(error)):
        random_local(200, n_inputs=4, seed=3).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]
    assert ft.load(path).n_outputs == 4


_KILLED_MID_SAVE = r"""
import os, signal, sys
import numpy as np
from fasttape.bench.families import random_local

real = np.lib.format.write_array
calls = []

def write_then_die(*args, **kwargs):
    calls.append(1)
    if len(calls) == 4:  # part of the archive is written: the process dies here
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

np.lib.format.write_array = write_then_die
random_local(2000, n_inputs=10, seed=9).save(sys.argv[1])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_process_killed_mid_save_leaves_the_previous_file(tmp_path):
    path = tmp_path / "t.npz"
    old = _graph_tape()
    old.save(path)
    before = path.read_bytes()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_SAVE, str(path)], cwd=root, capture_output=True,
        env={**os.environ, "PYTHONPATH": str(root)}, timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert path.read_bytes() == before
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "t.npz")
    assert all(n.startswith(".t.npz.") and n.endswith(".tmp") for n in leftovers), leftovers
    assert same_bits(ft.load(path).value([0.5, 0.6, 0.7]), old.value([0.5, 0.6, 0.7]))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and links")
def test_save_keeps_permissions_and_follows_links(tmp_path):
    real = tmp_path / "real.npz"
    _graph_tape().save(real)
    real.chmod(0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    tape = random_local(100, n_inputs=3, seed=2)
    tape.save(link)
    assert link.is_symlink() and (real.stat().st_mode & 0o777) == 0o640
    assert np.array_equal(ft.load(real).ops, tape.ops)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "real.npz"]


def test_save_and_load_through_file_objects():
    tape = _graph_tape()
    buf = io.BytesIO()
    tape.save(buf)
    buf.seek(0)
    assert np.array_equal(ft.load(buf).args, tape.args)


# ---------------------------------------------------------------------- not a tape
def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _object_array_npz(path: Path, good_file: Path) -> Path:
    a = saved_arrays(good_file)
    a["consts"] = np.array([1.0, "two"], dtype=object)
    return write_npz(path, a)


def _zip_of_other_things(path: Path, good_file: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("weights.npy", _npy(np.arange(3.0)))
        z.writestr("readme.txt", "hello")
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p, g: _written(p, b"hello, this is text\n" * 10), "not a zip archive"),
        (lambda p, g: _written(p, b""), "empty"),
        (lambda p, g: _written(p, b"\x00" * 300), "not a zip archive"),
        (lambda p, g: _written(p, pickle.dumps({"ops": [1, 2]})), "a pickle"),
        (lambda p, g: _written(p, _npy(np.arange(4))), "a single .npy array"),
        (_zip_of_other_things, "holds weights.npy, readme.txt"),
        (_object_array_npz, "holds Python objects"),
    ],
    ids=["text", "empty", "zeros", "pickle", "npy", "other-zip", "object-array"],
)
def test_garbage_is_reported_as_not_a_fasttape_tape(good_file, tmp_path, make, words):
    """NumPy's message for these suggests allow_pickle=, which ft.load neither has nor wants."""
    path = make(tmp_path / "garbage.npz", good_file)
    err = assert_refused(path, "not a fasttape tape")
    assert words in str(err) and "allow_pickle" not in str(err), str(err)


# ---------------------------------------------------------------------- load limits
@pytest.mark.parametrize("mode", ["", "fast", "Lean", 1, ["lean"]])
def test_load_refuses_a_grad_mode_that_is_not_one(good_file, mode):
    with pytest.raises(ValueError, match="grad_mode must be None"):
        ft.load(good_file, grad_mode=mode)


@pytest.mark.parametrize("max_bytes", [-1, 1.5, "8G", True])
def test_load_refuses_a_bad_max_bytes(good_file, max_bytes):
    with pytest.raises(ValueError, match="max_bytes must be None or an int"):
        ft.load(good_file, max_bytes=max_bytes)


def test_max_bytes_counts_the_declared_array_bytes(good_file):
    total = sum(a.nbytes for a in saved_arrays(good_file).values())
    assert ft.load(good_file, max_bytes=total).n_outputs == 4
    assert ft.load(good_file, max_bytes=None).n_outputs == 4
    assert_refused_with = pytest.raises(ft.TapeFormatError, match="max_bytes=")
    with assert_refused_with:
        ft.load(good_file, max_bytes=total - 1)


def _bomb(path: Path, good_file: Path, key: str, dtype: str, n: int, header_n=None) -> Path:
    """``good_file`` with member ``key`` holding ``n`` zeros of ``dtype``, deflated: a file
    of a few hundred KB whose member decompresses to ``n * itemsize`` bytes.  ``header_n``:
    the entry count the .npy header declares (default ``n``)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.dtype(dtype).str, "fortran_order": False,
                 "shape": (n if header_n is None else header_n,)})
    members = _members(good_file)
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            if name != key + ".npy":
                z.writestr(name, data)
        with z.open(key + ".npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            left = n * np.dtype(dtype).itemsize
            while left:
                f.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    return path


@pytest.fixture(scope="module")
def bombs(good_file, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    n = 2**25  # 256 MB of float64, 128 MB of int32
    return {
        "consts": _bomb(folder / "consts.npz", good_file, "consts", "<f8", n),
        "args": _bomb(folder / "args.npz", good_file, "args", "<i4", n),
        "liar": _bomb(folder / "liar.npz", good_file, "consts", "<f8", 2**20, header_n=3),
    }


@pytest.mark.parametrize(
    ("name", "max_bytes", "words"),
    [
        ("consts", 2**20, "more than max_bytes=1,048,576 bytes (member 'consts': 268,435,456"),
        ("args", ft.serialize.DEFAULT_MAX_BYTES, "'args' declares 33,554,432 entries, more than"),
        ("liar", None, "'consts' declares shape (3,) of float64 (24 bytes) but holds 8,388,608"),
    ],
)
def test_zip_bombs_are_refused_before_decompressing(bombs, name, max_bytes, words):
    """A small file whose arrays decompress to hundreds of MB: refused from the headers,
    without allocating (NumPy's np.load allocated and decompressed all of it)."""
    path = bombs[name]
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(ft.TapeFormatError) as info:
            ft.load(path, max_bytes=max_bytes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert words in str(info.value), str(info.value)
    assert peak < 16 * 2**20, f"allocated {peak:,} bytes"


def test_atomic_write_text_replaces_or_keeps(tmp_path):
    from fasttape.atomic import atomic_write, atomic_write_text

    path = tmp_path / "report.json"
    atomic_write_text(path, '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'

    def fail(f):
        f.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(path, fail)
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
