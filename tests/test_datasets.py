"""Tests for zerokara.datasets: the book's load_mnist, offline, verified, cached.

No test touches the network: an autouse fixture replaces the module's one
opener (``datasets._urlopen``) with one that fails the test, and the
download tests install fakes that serve bytes from memory. Every test gets
an empty user cache (``XDG_CACHE_HOME``) and no ``ZEROKARA_DATA``, unless it
sets them itself.

The real files come from ``$ZEROKARA_DATA`` (CI exports ``../shared``,
relative to the repository root) or ``../shared`` beside the repository.
The 47 MB training file is parsed once per session by a fixture that fills
a shared ``.npy`` cache; the tests that need the real arrays read them from
there. Small IDX files written by the tests cover every way a file can be
broken.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import inspect
import io
import os
import struct
import urllib.error
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _import_datasets():
    """zerokara.datasets, or the source file itself if the package is not importable.

    datasets.py depends on nothing else in zerokara, so its tests do not
    have to wait for the rest of the package to build.
    """
    try:
        from zerokara import datasets

        return datasets
    except ImportError:
        path = REPO / "src" / "zerokara" / "datasets.py"
        spec = importlib.util.spec_from_file_location("_zerokara_datasets_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


ds = _import_datasets()

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Computed once from the raw files in ../shared (numpy, int64 sums).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_SUMS = {0: 27525, 1: 31095, 59999: 20920}
MNIST_TEST_SUMS = {0: 18454, 9999: 41833}
FASHION_TRAIN_SUMS = {0: 76247, 1: 84598, 59999: 16684}
FASHION_TEST_SUMS = {0: 33456, 9999: 24390}


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


def _shared_root() -> Path | None:
    env = os.environ.get("ZEROKARA_DATA")
    candidates = []
    if env:
        # CI exports a path relative to the repository root.
        candidates.append(Path(env) if os.path.isabs(env) else REPO / env)
    candidates.append(REPO.parent / "shared")
    for root in candidates:
        if all((root / "mnist" / f"{name}.gz").is_file() for name in FILES):
            return root.resolve()
    return None


# Read at import, before any fixture removes ZEROKARA_DATA from the environment.
_SHARED = _shared_root()


@pytest.fixture(scope="session")
def shared() -> Path:
    root = _SHARED
    if root is None:
        pytest.skip("real MNIST not found: set ZEROKARA_DATA to the folder holding mnist/ (../shared in CI)")
    return root


def _no_network(request, timeout):
    raise AssertionError(f"a test tried to open {getattr(request, 'full_url', request)}")


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """No network, no user configuration, an empty cache, no system copies."""
    monkeypatch.delenv("ZEROKARA_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(ds, "_urlopen", _no_network)
    monkeypatch.setattr(ds, "_SYSTEM_DIRS", {"mnist": (), "fashion-mnist": ()})
    monkeypatch.setattr(ds, "_cache_warning_shown", False)


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """A user cache shared by the tests that load the real files."""
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture(scope="session")
def mnist_raw(shared, real_cache):
    """The real MNIST as uint8, parsed once; fills ``real_cache`` on the way."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ZEROKARA_DATA", raising=False)
        mp.setenv("XDG_CACHE_HOME", str(real_cache))
        return ds.load_mnist(normalize=False, data_dir=shared / "mnist")


@pytest.fixture
def use_real_cache(monkeypatch, real_cache, mnist_raw):
    """Point this test at the warm cache filled by ``mnist_raw``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(real_cache))


# --------------------------------------------------------------------------
# Small IDX files
# --------------------------------------------------------------------------


def idx_bytes(data: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes holding ``data``."""
    if magic is None:
        magic = 0x0800 + data.ndim
    header = struct.pack(f">I{data.ndim}I", magic, *data.shape)
    return header + np.ascontiguousarray(data, dtype=np.uint8).tobytes()


def small_arrays(seed: int = 0, n_train: int = 3, n_test: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_file(path: Path, raw: bytes, gz: bool) -> Path:
    """Write ``raw`` (gzip-compressed if ``gz``) atomically, as an editor would."""
    target = path.with_name(path.name + ".gz") if gz else path
    tmp = target.with_name(target.name + ".writing")
    tmp.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    os.replace(tmp, target)  # a new inode, so the change is visible to stat
    return target


def write_set(folder: Path, arrays: dict, gz: bool = True) -> dict:
    """Write the four files; return the SHA-256 of each decompressed file."""
    folder.mkdir(parents=True, exist_ok=True)
    shas = {}
    for name, data in arrays.items():
        raw = idx_bytes(data)
        write_file(folder / name, raw, gz)
        shas[name] = hashlib.sha256(raw).hexdigest()
    return shas


def assert_same(loaded, arrays: dict) -> None:
    (x_train, t_train), (x_test, t_test) = loaded
    np.testing.assert_array_equal(x_train, arrays["train-images-idx3-ubyte"].reshape(-1, 784))
    np.testing.assert_array_equal(t_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(x_test, arrays["t10k-images-idx3-ubyte"].reshape(-1, 784))
    np.testing.assert_array_equal(t_test, arrays["t10k-labels-idx1-ubyte"])


# --------------------------------------------------------------------------
# Real MNIST: the book's shapes, dtypes and values
# --------------------------------------------------------------------------


def test_book_defaults(use_real_cache, shared):
    (x_train, t_train), (x_test, t_test) = ds.load_mnist(data_dir=shared / "mnist")
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert t_train.shape == (60000,) and t_test.shape == (10000,)
    assert t_train.dtype == np.uint8 and t_test.dtype == np.uint8
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert x_train.flags.writeable and x_train.flags.c_contiguous


def test_real_values(mnist_raw):
    (x_train, t_train), (x_test, t_test) = mnist_raw
    assert x_train.dtype == np.uint8 and x_train.shape == (60000, 784)
    assert x_train.min() == 0 and x_train.max() == 255
    assert t_train[0] == 5 and t_test[0] == 7
    assert np.bincount(t_train, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(t_test, minlength=10).tolist() == MNIST_TEST_COUNTS
    for i, total in MNIST_TRAIN_SUMS.items():
        assert int(x_train[i].sum(dtype=np.int64)) == total
    for i, total in MNIST_TEST_SUMS.items():
        assert int(x_test[i].sum(dtype=np.int64)) == total


def test_normalize_is_the_books_bit_for_bit(use_real_cache, shared, mnist_raw):
    (x_train, _), (x_test, _) = ds.load_mnist(normalize=True, data_dir=shared / "mnist")
    for ours, raw in ((x_train, mnist_raw[0][0]), (x_test, mnist_raw[1][0])):
        book = raw.astype(np.float32)  # dataset/mnist.py, _load_img + normalize
        book /= 255.0
        # Exact equality: the same float32 operations, so the same bits.
        np.testing.assert_array_equal(ours, book)


def test_flatten_false(use_real_cache, shared, mnist_raw):
    (x_train, _), (x_test, _) = ds.load_mnist(normalize=False, flatten=False, data_dir=shared / "mnist")
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(x_train.reshape(60000, 784), mnist_raw[0][0])


def test_one_hot(use_real_cache, shared, mnist_raw):
    (_, t_train), (_, t_test) = ds.load_mnist(one_hot_label=True, data_dir=shared / "mnist")
    for one_hot, labels in ((t_train, mnist_raw[0][1]), (t_test, mnist_raw[1][1])):
        assert one_hot.shape == (labels.size, 10) and one_hot.dtype == np.float32
        np.testing.assert_array_equal(one_hot.sum(axis=1), 1.0)
        np.testing.assert_array_equal(one_hot.argmax(axis=1), labels)


def test_zerokara_data_env_and_parent_folder(use_real_cache, shared, mnist_raw, monkeypatch):
    monkeypatch.setenv("ZEROKARA_DATA", str(shared))
    (x_train, t_train), _ = ds.load_mnist(normalize=False)
    np.testing.assert_array_equal(t_train, mnist_raw[0][1])
    monkeypatch.delenv("ZEROKARA_DATA")
    (_, t_train), _ = ds.load_mnist(normalize=False, data_dir=shared)  # the parent, as in ZEROKARA_DATA
    np.testing.assert_array_equal(t_train, mnist_raw[0][1])


def test_warm_load_reads_npy_without_parsing(use_real_cache, shared, mnist_raw, real_cache, monkeypatch):
    def no_parse(path, kind):
        raise AssertionError(f"parsed {path} although the .npy cache is warm")

    monkeypatch.setattr(ds, "_read_idx", no_parse)
    loaded = ds.load_mnist(normalize=False, data_dir=shared / "mnist")
    for ours, theirs in zip(loaded, mnist_raw):
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])
        # Plain arrays the caller owns, not views of the cache files.
        assert type(ours[0]) is np.ndarray and ours[0].flags.writeable
        assert not isinstance(ours[0].base, np.memmap)
    npy = sorted(p.name for p in (real_cache / "zerokara" / "npy").glob("mnist-*.npy"))
    assert len(npy) == 4 and npy[0].endswith("-test-images.npy")


def test_embedded_copy_works_offline(mnist_raw):
    # hermetic: no ZEROKARA_DATA, an empty cache, no network.
    embedded = ds._EMBEDDED_ROOT / "mnist"
    assert sorted(p.name for p in embedded.glob("*.gz")) == sorted(f"{n}.gz" for n in FILES)
    loaded = ds.load_mnist(normalize=False)
    for ours, theirs in zip(loaded, mnist_raw):
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])


def test_embedded_copy_carries_attribution():
    text = (ds._EMBEDDED_ROOT / "mnist" / "README.md").read_text(encoding="utf-8")
    for needle in ("Yann LeCun", "Corinna Cortes", "Burges", "CC BY-SA 3.0"):
        assert needle in text
    assert "CC BY-SA 3.0" in (ds._EMBEDDED_ROOT / "mnist" / "LICENSE").read_text(encoding="utf-8")


def test_fashion_mnist_from_zerokara_data(shared, monkeypatch):
    if not (shared / "fashion-mnist").is_dir():
        pytest.skip(f"no fashion-mnist folder in {shared}")
    monkeypatch.setenv("ZEROKARA_DATA", str(shared))
    (x_train, t_train), (x_test, t_test) = ds.load_fashion_mnist(normalize=False)
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert np.bincount(t_train).tolist() == [6000] * 10
    assert np.bincount(t_test).tolist() == [1000] * 10
    for i, total in FASHION_TRAIN_SUMS.items():
        assert int(x_train[i].sum(dtype=np.int64)) == total
    for i, total in FASHION_TEST_SUMS.items():
        assert int(x_test[i].sum(dtype=np.int64)) == total


# --------------------------------------------------------------------------
# Small files: formats, verification and every kind of damage
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_small_set_loads_with_verify_false(tmp_path, gz):
    arrays = small_arrays()
    write_set(tmp_path / "data", arrays, gz=gz)
    assert_same(ds.load_mnist(normalize=False, data_dir=tmp_path / "data", verify=False), arrays)


def test_mixed_gz_and_plain_and_plain_preferred(tmp_path):
    arrays = small_arrays()
    folder = tmp_path / "data"
    write_set(folder, arrays, gz=True)
    # A decompressed file next to its .gz is the one read.
    other = small_arrays(seed=1)["train-labels-idx1-ubyte"]
    write_file(folder / "train-labels-idx1-ubyte", idx_bytes(other), gz=False)
    (_, t_train), _ = ds.load_mnist(data_dir=folder, verify=False)
    np.testing.assert_array_equal(t_train, other)


def test_checksum_mismatch_names_the_file(tmp_path):
    arrays = small_arrays()
    shas = write_set(tmp_path / "data", arrays)
    with pytest.raises(ds.ChecksumError) as info:
        ds.load_mnist(data_dir=tmp_path / "data")
    error = info.value
    path = tmp_path / "data" / "train-images-idx3-ubyte.gz"
    assert isinstance(error, ValueError) and error.path == path
    message = str(error)
    assert str(path) in message
    assert shas["train-images-idx3-ubyte"] in message and error.actual == shas["train-images-idx3-ubyte"]
    assert ds._MNIST.sha256["train-images-idx3-ubyte"] in message
    assert "verify=False" in message and "replace" in message
    # The same folder loads when the difference is deliberate.
    assert_same(ds.load_mnist(normalize=False, data_dir=tmp_path / "data", verify=False), arrays)


TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = FILES


def _u32(raw: bytes, offset: int, *values: int) -> bytes:
    """``raw`` with big-endian 32-bit ``values`` written at ``offset``."""
    packed = struct.pack(f">{len(values)}I", *values)
    return raw[:offset] + packed + raw[offset + len(packed) :]


# case: (file, raw IDX bytes -> (bytes to write, gz: True/False, None = already gz), words expected)
BROKEN = {
    "truncated-gz": (TRAIN_IMAGES, lambda raw: (gzip.compress(raw)[:-300], None), "truncated"),
    "truncated-plain": (TRAIN_IMAGES, lambda raw: (raw[:-100], False), "truncated"),
    "truncated-header": (TEST_LABELS, lambda raw: (raw[:6], False), "truncated"),
    "wrong-magic": (TRAIN_IMAGES, lambda raw: (_u32(raw, 0, 2049), True), "magic number is 2049"),
    "labels-magic-swapped": (TRAIN_LABELS, lambda raw: (_u32(raw, 0, 2051), True), "magic number is 2051"),
    "not-idx": (TEST_IMAGES, lambda raw: (b"<html>Not Found</html>" * 40, False), "magic number"),
    "image-size": (TEST_IMAGES, lambda raw: (_u32(raw, 8, 27, 28), True), "27x28"),
    "label-10": (TRAIN_LABELS, lambda raw: (raw[:8] + bytes([10]) + raw[9:], True), "label 10 at index 0"),
    "trailing-plain": (TRAIN_LABELS, lambda raw: (raw + b"\0\0", False), "2 unexpected bytes"),
    "trailing-gz": (TEST_IMAGES, lambda raw: (raw + b"\0" * 5, True), "5 unexpected bytes"),
    "huge-count": (TRAIN_IMAGES, lambda raw: (_u32(raw, 4, 10**9), True), "more than this"),
    "damaged-gz": (TRAIN_IMAGES, lambda raw: (_flip_middle(gzip.compress(raw)), None), "gzip"),
}


def test_checksum_error_recognises_a_known_file_in_the_wrong_place(tmp_path):
    fashion = ds._FASHION_MNIST.sha256["train-images-idx3-ubyte"]
    place = ds._Place("data_dir", tmp_path, "replace it with an intact copy")
    error = ds._checksum_error(ds._MNIST, "train-images-idx3-ubyte", tmp_path / "x.gz", fashion, place)
    assert "it is Fashion-MNIST's train-images-idx3-ubyte" in str(error)


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_is_named(tmp_path, case):
    name, breaker, expected = BROKEN[case]
    folder = tmp_path / "data"
    write_set(folder, small_arrays(), gz=False)
    (folder / name).unlink()
    content, gz = breaker(idx_bytes(small_arrays()[name]))
    if gz is None:  # already compressed: write the bytes as they are
        path = folder / f"{name}.gz"
        path.write_bytes(content)
    else:
        path = write_file(folder / name, content, gz)
    with pytest.raises(ds.DatasetError) as info:
        ds.load_mnist(data_dir=folder, verify=False)
    assert isinstance(info.value, ValueError)
    assert info.value.path == path
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_broken_file_is_named_with_verify_too(tmp_path):
    # verify=True reports the structural problem, which says more than a checksum.
    folder = tmp_path / "data"
    write_set(folder, small_arrays(), gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ds.DatasetError, match="truncated") as info:
        ds.load_mnist(data_dir=folder)
    assert not isinstance(info.value, ds.ChecksumError) and info.value.path == path


def test_count_mismatch_between_images_and_labels(tmp_path):
    arrays = small_arrays()
    arrays["train-labels-idx1-ubyte"] = np.array([1, 2, 3, 4], dtype=np.uint8)  # 4 labels, 3 images
    write_set(tmp_path / "data", arrays)
    with pytest.raises(ds.DatasetError) as info:
        ds.load_mnist(data_dir=tmp_path / "data", verify=False)
    assert info.value.path == tmp_path / "data" / "train-labels-idx1-ubyte.gz"
    assert "4 labels" in str(info.value) and "3 images" in str(info.value)


def test_flags_are_checked():
    with pytest.raises(TypeError, match="data_dir="):
        ds.load_mnist("some/folder")
    with pytest.raises(TypeError, match="data_dir"):
        ds.load_mnist(data_dir=123)


@pytest.mark.skipif(ds.load_mnist.__doc__ is None, reason="docstrings stripped (python -OO)")
@pytest.mark.parametrize("loader, name", [(ds.load_mnist, "mnist"), (ds.load_fashion_mnist, "fashion-mnist")])
def test_docstrings_are_complete(loader, name):
    # The shared sections are filled in at import: each loader documents
    # every parameter, with its own folder names, and keeps its own Notes.
    doc = inspect.getdoc(loader)
    assert "{" not in doc
    parameters = list(inspect.signature(loader).parameters)
    assert parameters == ["normalize", "flatten", "one_hot_label", "data_dir", "download", "verify"]
    for section in ("Parameters", "Returns", "Raises", "Notes"):
        assert f"\n{section}\n{'-' * len(section)}\n" in doc
    for parameter in parameters:
        assert f"\n{parameter} : " in doc
    assert f"its ``{name}`` subfolder" in doc and f"``~/.cache/zerokara/{name}``" in doc
    assert f"``$ZEROKARA_DATA/{name}``" in doc  # in the loader's own Notes


# --------------------------------------------------------------------------
# Where files are looked for
# --------------------------------------------------------------------------


def test_data_dir_is_the_only_place_looked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ds.DatasetNotFoundError) as info:
        ds.load_mnist(data_dir=tmp_path / "empty")  # the embedded copy exists, but is not used
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "empty") in message and "embedded copy:" not in message
    assert "data_dir" in message


def test_partial_folder_is_skipped_with_a_warning(tmp_path, monkeypatch):
    arrays = small_arrays()
    partial = tmp_path / "env" / "fashion-mnist"
    write_set(partial, {k: v for k, v in arrays.items() if "train" in k})
    write_set(tmp_path / "system", arrays)
    monkeypatch.setenv("ZEROKARA_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(ds, "_SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "system",)})
    with pytest.warns(UserWarning, match="holds only 2 of the 4"):
        loaded = ds.load_fashion_mnist(normalize=False, verify=False)
    assert_same(loaded, arrays)


def test_nothing_found_offline_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROKARA_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(ds, "_SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "debian",)})
    with pytest.raises(ds.DatasetNotFoundError) as info:
        ds.load_fashion_mnist(download=False)
    message = str(info.value)
    cache = tmp_path / "xdg-cache" / "zerokara" / "fashion-mnist"
    for place in (tmp_path / "env" / "fashion-mnist", tmp_path / "debian", cache):
        assert str(place) in message
    assert len(info.value.searched) == 3
    assert "download=False" in message and "data_dir=" in message and "ZEROKARA_DATA" in message
    assert "download=True" in message


# --------------------------------------------------------------------------
# The .npy cache
# --------------------------------------------------------------------------


def _npy_files(cache_home: Path) -> list:
    return sorted((cache_home / "zerokara" / "npy").glob("*.npy"))


def test_cache_is_keyed_by_checksum(tmp_path):
    folder = tmp_path / "data"
    first = small_arrays(seed=0)
    write_set(folder, first)
    assert_same(ds.load_mnist(normalize=False, data_dir=folder, verify=False), first)
    assert len(_npy_files(tmp_path / "xdg-cache")) == 4
    second = dict(first, **{"t10k-labels-idx1-ubyte": (first["t10k-labels-idx1-ubyte"] + 1) % 10})
    write_set(folder, second)
    assert_same(ds.load_mnist(normalize=False, data_dir=folder, verify=False), second)
    assert len(_npy_files(tmp_path / "xdg-cache")) == 8  # a new key, a new set


def test_settled_files_are_not_rehashed(tmp_path, monkeypatch):
    # Pretend the files are old enough for their stat signature to be trusted.
    monkeypatch.setattr(ds, "_RACY_SECONDS", -1e9)
    folder = tmp_path / "data"
    arrays = small_arrays()
    write_set(folder, arrays)
    ds.load_mnist(data_dir=folder, verify=False)
    calls = []
    real_read_idx = ds._read_idx
    monkeypatch.setattr(ds, "_read_idx", lambda path, kind: calls.append(path) or real_read_idx(path, kind))
    assert_same(ds.load_mnist(normalize=False, data_dir=folder, verify=False), arrays)
    assert calls == []
    # A replaced file changes the signature: parsed again, new content seen.
    changed = dict(arrays, **{"train-labels-idx1-ubyte": (arrays["train-labels-idx1-ubyte"] + 3) % 10})
    write_set(folder, changed)
    assert_same(ds.load_mnist(normalize=False, data_dir=folder, verify=False), changed)
    assert len(calls) == 4


def test_fresh_files_are_rehashed(tmp_path, monkeypatch):
    # A file changed within the last seconds may change again without its
    # mtime moving, so its signature is not trusted yet.
    folder = tmp_path / "data"
    write_set(folder, small_arrays())
    ds.load_mnist(data_dir=folder, verify=False)
    inodes = {p: p.stat().st_ino for p in _npy_files(tmp_path / "xdg-cache")}
    calls = []
    real_read_idx = ds._read_idx
    monkeypatch.setattr(ds, "_read_idx", lambda path, kind: calls.append(path) or real_read_idx(path, kind))
    ds.load_mnist(data_dir=folder, verify=False)
    assert len(calls) == 4
    # Same checksums, same cache files: they are not written again.
    assert {p: p.stat().st_ino for p in _npy_files(tmp_path / "xdg-cache")} == inodes


@pytest.mark.parametrize("poison", ["pickled-object-array", "truncated", "wrong-shape"])
def test_bad_npy_cache_is_a_miss_never_unpickled(tmp_path, monkeypatch, poison):
    monkeypatch.setattr(ds, "_RACY_SECONDS", -1e9)
    folder = tmp_path / "data"
    arrays = small_arrays()
    write_set(folder, arrays)
    ds.load_mnist(data_dir=folder, verify=False)
    target = next(p for p in _npy_files(tmp_path / "xdg-cache") if p.name.endswith("-train-labels.npy"))
    if poison == "pickled-object-array":
        buffer = io.BytesIO()
        np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
        target.write_bytes(buffer.getvalue())
    elif poison == "truncated":
        target.write_bytes(target.read_bytes()[:-2])
    else:
        np.save(target, np.zeros(7, dtype=np.uint8))
    assert_same(ds.load_mnist(normalize=False, data_dir=folder, verify=False), arrays)
    # The bad file was replaced by a good one.
    np.testing.assert_array_equal(np.load(target, allow_pickle=False), arrays["train-labels-idx1-ubyte"])


def test_no_pickle_in_the_module():
    source = Path(ds.__file__).read_text(encoding="utf-8")
    assert "import pickle" not in source and "allow_pickle=True" not in source


@pytest.mark.parametrize("how", ["cache-under-a-file", "write-fails"])
def test_unwritable_cache_costs_speed_not_an_error(tmp_path, monkeypatch, how):
    # chmod cannot stop root, so make the cache unwritable in ways that
    # hold for any user: its parent is a regular file, or writes fail.
    if how == "cache-under-a-file":
        (tmp_path / "a-file").write_text("not a folder")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    else:

        def refuse(path, write):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(ds, "_atomic_write", refuse)
    folder = tmp_path / "data"
    arrays = small_arrays()
    write_set(folder, arrays)
    with pytest.warns(RuntimeWarning, match="could not write its array cache"):
        assert_same(ds.load_mnist(normalize=False, data_dir=folder, verify=False), arrays)
    # Warned once per process, not on every load.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(ds.load_mnist(normalize=False, data_dir=folder, verify=False), arrays)


@pytest.fixture(params=[0o022, 0o002], ids=["umask-022", "umask-002"])
def umask(request):
    """Run the test under this umask, then restore the one it had."""
    if os.name != "posix":
        pytest.skip("file modes and the umask are POSIX")
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_cache_files_get_the_mode_open_gives(tmp_path, umask):
    # The mode of a file written with open(): 0o644 or 0o664 here, where a
    # file made by tempfile and renamed would keep 0o600.
    folder = tmp_path / "data"
    write_set(folder, small_arrays())
    ds.load_mnist(data_dir=folder, verify=False)
    written = _npy_files(tmp_path / "xdg-cache") + [tmp_path / "xdg-cache" / "zerokara" / "npy" / "index.json"]
    assert len(written) == 5
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(0o666 & ~umask) for p in written}


# --------------------------------------------------------------------------
# Downloads, with fake openers
# --------------------------------------------------------------------------


class FakeResponse:
    """Serves ``body``; raises ``error`` once ``fail_at`` bytes were read."""

    def __init__(self, body: bytes, fail_at: int | None = None, error: BaseException | None = None):
        self.body, self.pos, self.fail_at, self.error = body, 0, fail_at, error
        self.headers = {"Content-Length": str(len(body))}

    def read(self, n: int = -1) -> bytes:
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise self.error
        end = len(self.body) if n < 0 else self.pos + n
        if self.fail_at is not None:
            end = min(end, self.fail_at)
        chunk, self.pos = self.body[self.pos : end], min(end, len(self.body))
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


class FakeOpener:
    """Records each request and answers it with ``serve(url)``."""

    def __init__(self, serve: Callable[[str], object]):
        self.serve = serve
        self.requests = []

    def __call__(self, request, timeout):
        self.requests.append((request.full_url, request.get_header("User-agent"), timeout))
        answer = self.serve(request.full_url)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def no_embedded(tmp_path, monkeypatch):
    """A damaged install: the embedded copy is gone."""
    monkeypatch.setattr(ds, "_EMBEDDED_ROOT", tmp_path / "site-packages-without-data")


def _small_mirror(monkeypatch, arrays: dict) -> dict:
    """Gzip the small set and make it the official MNIST; return name.gz -> bytes."""
    shas = {name: hashlib.sha256(idx_bytes(a)).hexdigest() for name, a in arrays.items()}
    monkeypatch.setattr(ds, "_MNIST", ds._MNIST._replace(sha256=shas))
    return {f"{name}.gz": gzip.compress(idx_bytes(a), mtime=0) for name, a in arrays.items()}


def test_mirrors_are_https_and_never_lecun():
    for spec in (ds._MNIST, ds._FASHION_MNIST):
        assert spec.mirrors and all(url.startswith("https://") for url in spec.mirrors)
        assert not any("yann.lecun.com" in url for url in spec.mirrors)
    assert ds._MNIST.mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"


def test_download_real_files(shared, mnist_raw, no_embedded, tmp_path, monkeypatch):
    served = {f"{name}.gz": (shared / "mnist" / f"{name}.gz").read_bytes() for name in FILES}
    opener = FakeOpener(lambda url: FakeResponse(served[url.rsplit("/", 1)[1]]))
    monkeypatch.setattr(ds, "_urlopen", opener)
    loaded = ds.load_mnist(normalize=False)
    for ours, theirs in zip(loaded, mnist_raw):
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])
    assert [url for url, _, _ in opener.requests] == [ds._MNIST.mirrors[0] + f"{name}.gz" for name in FILES]
    assert all(agent.startswith("zerokara/") and 0 < timeout <= 120 for _, agent, timeout in opener.requests)
    cache = tmp_path / "xdg-cache" / "zerokara" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(served)  # no temporary files
    for name, body in served.items():
        assert (cache / name).read_bytes() == body
    # Second call: found in the cache, nothing downloaded.
    monkeypatch.setattr(ds, "_urlopen", _no_network)
    (_, t_train), _ = ds.load_mnist(normalize=False)
    assert t_train[0] == 5


def test_download_falls_back_to_the_next_mirror(no_embedded, tmp_path, monkeypatch):
    arrays = small_arrays()
    served = _small_mirror(monkeypatch, arrays)
    first, second = ds._MNIST.mirrors

    def serve(url):
        if url.startswith(first):
            return urllib.error.URLError("first mirror down")
        return FakeResponse(served[url.rsplit("/", 1)[1]])

    opener = FakeOpener(serve)
    monkeypatch.setattr(ds, "_urlopen", opener)
    assert_same(ds.load_mnist(normalize=False), arrays)
    assert [url for url, _, _ in opener.requests][:2] == [first + FILES[0] + ".gz", second + FILES[0] + ".gz"]


def test_download_of_wrong_data_is_not_kept(no_embedded, tmp_path, monkeypatch):
    arrays = small_arrays()
    _small_mirror(monkeypatch, arrays)
    wrong = gzip.compress(idx_bytes(small_arrays(seed=9)["train-images-idx3-ubyte"]))
    monkeypatch.setattr(ds, "_urlopen", FakeOpener(lambda url: FakeResponse(wrong)))
    with pytest.raises(ds.DatasetNotFoundError) as info:
        ds.load_mnist()
    assert "ChecksumError" in str(info.value)
    cache = tmp_path / "xdg-cache" / "zerokara" / "mnist"
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    "error", [ConnectionResetError(104, "Connection reset by peer"), KeyboardInterrupt()], ids=["reset", "ctrl-c"]
)
def test_interrupted_download_leaves_nothing(no_embedded, tmp_path, monkeypatch, error):
    served = _small_mirror(monkeypatch, small_arrays())
    opener = FakeOpener(lambda url: FakeResponse(served[url.rsplit("/", 1)[1]], fail_at=500, error=error))
    monkeypatch.setattr(ds, "_urlopen", opener)
    expected = KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else ds.DatasetNotFoundError
    with pytest.raises(expected) as info:
        ds.load_mnist()
    cache = tmp_path / "xdg-cache" / "zerokara" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []
    if expected is KeyboardInterrupt:
        assert len(opener.requests) == 1  # Ctrl-C stops at once, no other mirror tried
    else:
        assert len(opener.requests) == len(ds._MNIST.mirrors)
        assert "ConnectionResetError" in str(info.value)


def test_partial_cache_downloads_only_what_is_missing(no_embedded, tmp_path, monkeypatch):
    arrays = small_arrays()
    served = _small_mirror(monkeypatch, arrays)
    cache = tmp_path / "xdg-cache" / "zerokara" / "mnist"
    cache.mkdir(parents=True)
    for name in FILES[:3]:
        (cache / f"{name}.gz").write_bytes(served[f"{name}.gz"])
    opener = FakeOpener(lambda url: FakeResponse(served[url.rsplit("/", 1)[1]]))
    monkeypatch.setattr(ds, "_urlopen", opener)
    assert_same(ds.load_mnist(normalize=False), arrays)
    assert [url.rsplit("/", 1)[1] for url, _, _ in opener.requests] == [f"{FILES[3]}.gz"]


def test_downloads_get_the_mode_open_gives(no_embedded, tmp_path, monkeypatch, umask):
    served = _small_mirror(monkeypatch, small_arrays())
    monkeypatch.setattr(ds, "_urlopen", FakeOpener(lambda url: FakeResponse(served[url.rsplit("/", 1)[1]])))
    ds.load_mnist()
    cache = tmp_path / "xdg-cache" / "zerokara" / "mnist"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in cache.iterdir()}
    assert modes == {name: oct(0o666 & ~umask) for name in served}


def test_no_network_gives_one_clear_error(no_embedded, tmp_path, monkeypatch):
    opener = FakeOpener(lambda url: urllib.error.URLError("[Errno -3] Temporary failure in name resolution"))
    monkeypatch.setattr(ds, "_urlopen", opener)
    with pytest.raises(ds.DatasetNotFoundError) as info:
        ds.load_mnist()
    message = str(info.value)
    assert "$ZEROKARA_DATA: not set" in message
    assert str(tmp_path / "site-packages-without-data" / "mnist") in message
    assert str(tmp_path / "xdg-cache" / "zerokara" / "mnist") in message
    for mirror in ds._MNIST.mirrors:
        assert mirror + FILES[0] + ".gz" in message
    assert "Temporary failure in name resolution" in message
    assert "data_dir=" in message and "ZEROKARA_DATA" in message and "download=True" in message
    assert "reinstall" in message  # the embedded copy is missing: the install is damaged
    assert len(opener.requests) == len(ds._MNIST.mirrors)  # stops at the first file nobody serves
