"""MNIST and Fashion-MNIST with the book's ``load_mnist``: offline, verified, fast.

This is the book's ``dataset/mnist.py`` (``load_mnist(normalize, flatten,
one_hot_label)``, chapter 3.6) with the same return values, rebuilt around
three promises:

* **It works offline.** MNIST ships inside the package (``_data/mnist``, with
  its attribution and licence), so ``load_mnist()`` needs no network on a
  fresh install. The book's loader depends on a download that has broken
  more than once.
* **It trusts nothing it reads.** IDX files are parsed with strict checks
  (magic number, dimensions, sizes, counts, label range, no missing or
  trailing bytes), and the SHA-256 of the decompressed content is compared
  with the published one, so official downloads, recompressed copies and
  decompressed files all verify, and anything else is reported by file name.
* **It is fast the second time.** The decoded ``uint8`` arrays are cached as
  ``.npy`` files in the user cache, keyed by the source files' SHA-256; a
  small JSON index remembers each source file's stat signature (size, mtime,
  ctime, inode, device) so that a warm load neither decompresses nor re-hashes
  anything (a file changed in the last seconds is hashed again, as its
  signature could still miss a change). No pickle is used anywhere (the
  book caches with pickle).

Where the files are looked for, in this order:

1. ``data_dir`` (or its ``<name>`` subfolder), when given, and then nowhere
   else: a folder passed on purpose, possibly holding different data loaded
   with ``verify=False``, must never be silently replaced by another copy;
2. ``$ZEROKARA_DATA/<name>`` (``<name>`` is ``mnist`` or ``fashion-mnist``);
3. the copy embedded in the package (MNIST only);
4. ``/usr/share/datasets/fashion-mnist`` (Fashion-MNIST only: Debian's
   ``dataset-fashion-mnist`` package);
5. the user cache ``$XDG_CACHE_HOME/zerokara/<name>`` (default
   ``~/.cache/zerokara/<name>``), where missing files are downloaded when
   ``download=True``.

In every folder each of the four files may be gzip-compressed (``name.gz``)
or decompressed (``name``); the decompressed one is preferred when both are
present. This module depends only on the standard library, NumPy and (for
the download progress bar) tqdm, and imports nothing else from zerokara.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
import warnings
from pathlib import Path
from typing import IO, Any, Callable, NamedTuple, Union

import numpy as np

__all__ = [
    "load_mnist",
    "load_fashion_mnist",
    "DatasetError",
    "ChecksumError",
    "DatasetNotFoundError",
]

PathLike = Union[str, "os.PathLike[str]"]
Split = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class DatasetError(ValueError):
    """A data file is malformed: its IDX structure is not what it must be.

    The message starts with the file's path, so the user knows which file to
    replace, and says what was expected and what was found.

    Attributes
    ----------
    path : pathlib.Path
        The offending file.
    reason : str
        What is wrong with it (the message without the path).
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ChecksumError(DatasetError):
    """A data file is well formed but its content is not the official one.

    Raised when the SHA-256 of the decompressed content differs from the
    published sum (only with ``verify=True``, and always for downloads).

    Attributes
    ----------
    path : pathlib.Path
        The offending file.
    expected, actual : str
        The published SHA-256 and the one found (hex).
    """

    def __init__(self, path: PathLike, expected: str, actual: str, reason: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(path, reason)


class DatasetNotFoundError(FileNotFoundError):
    """No complete copy of the data set was found, and none could be downloaded.

    The message lists every place looked (and every download attempt) and
    the two ways to supply the data.

    Attributes
    ----------
    searched : list of str
        One line per place looked.
    """

    def __init__(self, message: str, searched: list[str]) -> None:
        super().__init__(message)
        self.searched = searched


# --------------------------------------------------------------------------
# The data sets
# --------------------------------------------------------------------------

_TRAIN_IMAGES = "train-images-idx3-ubyte"
_TRAIN_LABELS = "train-labels-idx1-ubyte"
_TEST_IMAGES = "t10k-images-idx3-ubyte"
_TEST_LABELS = "t10k-labels-idx1-ubyte"
_FILES = (_TRAIN_IMAGES, _TRAIN_LABELS, _TEST_IMAGES, _TEST_LABELS)
_KIND = {_TRAIN_IMAGES: "images", _TRAIN_LABELS: "labels", _TEST_IMAGES: "images", _TEST_LABELS: "labels"}
_CACHE_STEM = {
    _TRAIN_IMAGES: "train-images",
    _TRAIN_LABELS: "train-labels",
    _TEST_IMAGES: "test-images",
    _TEST_LABELS: "test-labels",
}

_IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_ROWS = _COLS = 28
_NUM_CLASSES = 10
_GZIP_MAGIC = b"\x1f\x8b"
# Deflate cannot expand data more than about 1032:1, so a gzip file of S
# bytes decompresses to at most ~1032 S bytes: this bounds what a (possibly
# corrupt) header may make us allocate.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 22  # 4 MiB: large enough that Python's per-chunk cost is negligible

_TIMEOUT = 30.0  # seconds without a byte from the server before giving up
# A file changed less than this long before we hashed it may be rewritten
# within the file system's timestamp granularity without its stat signature
# changing ("racy clean" in git's terms), so its signature is not recorded.
_RACY_SECONDS = 2.0


class _Spec(NamedTuple):
    name: str  # folder name under $ZEROKARA_DATA and the caches
    title: str  # for messages
    loader: str  # public function, for messages
    sha256: dict  # file stem -> SHA-256 of the decompressed file
    mirrors: tuple  # base URLs, tried in order
    embedded: bool  # shipped inside the package


# SHA-256 of the decompressed files, from ../shared/mnist/README.md and
# ../shared/fashion-mnist/README.md (the published sums of the originals).
_MNIST = _Spec(
    name="mnist",
    title="MNIST",
    loader="load_mnist",
    sha256={
        _TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        _TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        _TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        _TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    # The book's own mirror since 2024, then Google's. Never yann.lecun.com,
    # which refuses scripted downloads.
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    embedded=True,
)

_FASHION_MNIST = _Spec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    loader="load_fashion_mnist",
    sha256={
        _TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        _TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        _TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        _TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    mirrors=("https://storage.googleapis.com/tensorflow/tf-keras-datasets/",),
    embedded=False,
)

# Module-level so that tests can point them elsewhere.
_EMBEDDED_ROOT = Path(__file__).resolve().parent / "_data"
_SYSTEM_DIRS: dict = {
    "mnist": (),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


def _urlopen(request: Any, timeout: float) -> Any:
    """Open a URL; the one door to the network, replaced by a fake in tests.

    urllib.request is imported here, not at module level, because importing
    it costs about 30 ms that a warm load should not pay.
    """
    import urllib.request

    return urllib.request.urlopen(request, timeout=timeout)


# --------------------------------------------------------------------------
# IDX parsing
# --------------------------------------------------------------------------


def _open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for reading, decompressing it if it is gzip.

    Compression is recognised by content, not by name: IDX files start with
    two zero bytes, gzip files with 1f 8b, so the two cannot be confused.
    """
    with open(path, "rb") as f:
        is_gzip = f.read(2) == _GZIP_MAGIC
    if is_gzip:
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_idx(path: Path, kind: str) -> tuple[np.ndarray, str]:
    """Parse one IDX file with strict checks.

    Parameters
    ----------
    path : pathlib.Path
        The file, gzip-compressed or not.
    kind : {"images", "labels"}
        What the file must hold.

    Returns
    -------
    data : ndarray of uint8
        Shape (N, 28, 28) for images, (N,) with values 0..9 for labels. The
        array is freshly allocated and writable.
    sha256 : str
        SHA-256 (hex) of the decompressed file, header included.

    Raises
    ------
    DatasetError
        On a wrong magic number or dimensions, a truncated or damaged file,
        bytes after the announced data, or labels outside 0..9.
    """
    import gzip
    import zlib

    expected_magic, ndim = (_IMAGE_MAGIC, 3) if kind == "images" else (_LABEL_MAGIC, 1)
    header_len = 4 + 4 * ndim
    digest = hashlib.sha256()
    file_size = path.stat().st_size
    try:
        with _open_binary(path) as f:
            compressed = isinstance(f, gzip.GzipFile)
            head = f.read(header_len)
            digest.update(head)
            if len(head) >= 4:
                _check_magic(path, int.from_bytes(head[:4], "big"), expected_magic, kind)
            if len(head) < header_len:
                raise DatasetError(
                    path,
                    f"truncated: the file holds {len(head)} bytes, less than the "
                    f"{header_len}-byte header of an IDX {kind} file",
                )
            dims = struct.unpack(f">{ndim}I", head[4:])
            count = dims[0]
            if kind == "images" and dims[1:] != (_ROWS, _COLS):
                raise DatasetError(
                    path,
                    f"images are {dims[1]}x{dims[2]} pixels, expected "
                    f"{_ROWS}x{_COLS} (MNIST and Fashion-MNIST format)",
                )
            size = count * (_ROWS * _COLS if kind == "images" else 1)
            # Refuse before allocating what the file cannot possibly hold,
            # so a corrupt count gives this message, not a MemoryError.
            limit = file_size * _MAX_DEFLATE_RATIO if compressed else file_size - header_len
            if size > limit:
                raise DatasetError(
                    path,
                    f"truncated or bad header: the header announces {count} {kind} "
                    f"({size} bytes after the {header_len}-byte header), more than "
                    f"this {file_size}-byte {'gzip ' if compressed else ''}file can hold",
                )
            data = np.empty(size, dtype=np.uint8)
            view = memoryview(data)
            pos = 0
            while pos < size:
                n = f.readinto(view[pos : pos + _CHUNK])
                if not n:
                    break
                digest.update(view[pos : pos + n])
                pos += n
            if pos < size:
                raise DatasetError(
                    path,
                    f"truncated: the header announces {count} {kind} ({size} bytes "
                    f"after the {header_len}-byte header), but the file ends after "
                    f"{pos} of them",
                )
            extra = 0
            while True:  # reading to the end also makes gzip check its CRC
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                extra += len(chunk)
            if extra:
                raise DatasetError(
                    path,
                    f"{extra} unexpected bytes after the {count} {kind} the header "
                    f"announces (trailing data, or a wrong count in the header)",
                )
    except EOFError as exc:
        raise DatasetError(
            path,
            "truncated gzip data: the compressed stream ends early (an interrupted "
            "download or copy?)",
        ) from exc
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise DatasetError(path, f"damaged gzip data ({exc})") from exc

    if kind == "labels":
        if data.size and data.max() >= _NUM_CLASSES:
            bad = np.flatnonzero(data >= _NUM_CLASSES)
            raise DatasetError(
                path,
                f"label {data[bad[0]]} at index {bad[0]} ({bad.size} labels out of "
                f"range); labels must be 0..{_NUM_CLASSES - 1}",
            )
        return data, digest.hexdigest()
    return data.reshape(count, _ROWS, _COLS), digest.hexdigest()


def _check_magic(path: Path, magic: int, expected: int, kind: str) -> None:
    """Raise a DatasetError naming what the file looks like instead."""
    if magic == expected:
        return
    looks = {
        _IMAGE_MAGIC: "an IDX images file",
        _LABEL_MAGIC: "an IDX labels file",
    }.get(magic, "not an IDX file of unsigned bytes")
    raise DatasetError(
        path,
        f"magic number is {magic} (0x{magic:08x}, {looks}), expected {expected} "
        f"(0x{expected:08x}) for an IDX {kind} file",
    )


# --------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------


class _Place(NamedTuple):
    label: str  # how messages call it
    folder: Path
    hint: str  # how to repair a bad file found here


def _cache_root() -> Path:
    """``$XDG_CACHE_HOME/zerokara``, default ``~/.cache/zerokara``.

    The XDG spec says a relative XDG_CACHE_HOME is to be ignored.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "zerokara"
    try:
        return Path.home() / ".cache" / "zerokara"
    except (RuntimeError, KeyError):  # no home directory (some containers)
        import tempfile

        return Path(tempfile.gettempdir()) / "zerokara-cache"


def _find_files(folder: Path) -> tuple[dict, list]:
    """Map each of the four stems to its file in ``folder`` (plain or .gz)."""
    found: dict = {}
    missing: list = []
    for stem in _FILES:
        for candidate in (folder / stem, folder / (stem + ".gz")):
            # The decompressed file first: it is read without inflating.
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            missing.append(stem)
    return found, missing


def _describe(place: _Place, found: dict, missing: list) -> str:
    if not place.folder.is_dir():
        state = "no such folder"
    elif not found:
        state = "none of the four files there"
    else:
        state = "missing " + ", ".join(f"{stem}[.gz]" for stem in missing)
    return f"{place.label}: {place.folder} ({state})"


def _places(spec: _Spec, data_dir: PathLike | None) -> tuple[list, list]:
    """The folders to look in, in order, and notes on places not configured."""
    replace = "replace it with an intact copy"
    if data_dir is not None:
        try:
            root = Path(os.fspath(data_dir)).expanduser()
        except TypeError:
            raise TypeError(
                f"data_dir must be a path (str or os.PathLike) or None, got "
                f"{type(data_dir).__name__} {data_dir!r}"
            ) from None
        places = [_Place("data_dir", root, replace)]
        # Accept the parent too, as $ZEROKARA_DATA is given: data_dir=shared/.
        if (root / spec.name).is_dir():
            places.append(_Place(f"data_dir/{spec.name}", root / spec.name, replace))
        return places, []

    places, notes = [], []
    env = os.environ.get("ZEROKARA_DATA", "")
    if env:
        folder = Path(env).expanduser() / spec.name
        places.append(_Place(f"$ZEROKARA_DATA/{spec.name}", folder, replace))
    else:
        notes.append("$ZEROKARA_DATA: not set")
    if spec.embedded:
        places.append(
            _Place(
                "embedded copy",
                _EMBEDDED_ROOT / spec.name,
                "reinstall zerokara, whose installed copy is damaged "
                "(pip install --force-reinstall zerokara)",
            )
        )
    for folder in _SYSTEM_DIRS.get(spec.name, ()):
        places.append(_Place("system copy", Path(folder), replace))
    return places, notes


def _user_cache_place(spec: _Spec) -> _Place:
    return _Place(
        "user cache",
        _cache_root() / spec.name,
        f"delete it, and {spec.loader}() downloads it again",
    )


def _locate(spec: _Spec, data_dir: PathLike | None, download: bool) -> tuple[dict, _Place]:
    """Find a folder holding all four files; download into the cache if needed.

    Files are never mixed across folders, except that the user cache is
    completed by downloading the files it lacks.
    """
    places, searched = _places(spec, data_dir)
    for place in places:
        found, missing = _find_files(place.folder)
        if not missing:
            return found, place
        searched.append(_describe(place, found, missing))
        if found and data_dir is None:
            warnings.warn(
                f"{spec.title}: ignoring {place.folder} ({place.label}), which holds only "
                f"{len(found)} of the 4 files (missing: {', '.join(missing)})",
                stacklevel=4,
            )
    if data_dir is not None:
        raise _not_found(spec, searched, [], data_dir_given=True, download=download)

    cache = _user_cache_place(spec)
    found, missing = _find_files(cache.folder)
    if not missing:
        return found, cache
    searched.append(_describe(cache, found, missing))
    failures: list = []
    if download:
        failures = _download_missing(spec, cache.folder, missing)
        if not failures:
            found, missing = _find_files(cache.folder)
            if not missing:
                return found, cache
            failures = [f"{cache.folder}: files vanished after download: {', '.join(missing)}"]
    raise _not_found(spec, searched, failures, data_dir_given=False, download=download)


def _not_found(
    spec: _Spec, searched: list, failures: list, *, data_dir_given: bool, download: bool
) -> DatasetNotFoundError:
    files = ", ".join(f"{stem}.gz" for stem in _FILES)
    cache_folder = _cache_root() / spec.name
    lines = [f"{spec.title} not found: no folder holds all four files ({files}; each may also be decompressed)."]
    lines.append("Looked in:")
    lines += [f"  - {line}" for line in searched]
    if data_dir_given:
        lines.append("Only data_dir was searched, and nothing is downloaded into it.")
    elif failures:
        lines.append("Download failed:")
        lines += [f"  - {line}" for line in failures]
    elif not download:
        lines.append("Nothing was downloaded because download=False.")
    lines.append("To supply the data, either")
    if data_dir_given:
        lines.append("  1. pass data_dir=FOLDER for a folder that holds all four files, or")
        lines.append(
            f"  2. omit data_dir: {spec.loader}() then also looks in $ZEROKARA_DATA/{spec.name}"
            + (", the embedded copy" if spec.embedded else "")
            + f" and {cache_folder}, and with download=True and network access downloads the files there."
        )
    else:
        lines.append(
            f"  1. put the four files in a folder and pass {spec.loader}(data_dir=FOLDER), or set "
            f"ZEROKARA_DATA to a folder whose '{spec.name}' subfolder holds them, or"
        )
        lines.append(
            f"  2. call {spec.loader}(download=True) with network access: the files are "
            f"downloaded from {spec.mirrors[0]} into {cache_folder}."
        )
    if spec.embedded and not data_dir_given:
        lines.append(
            "The copy embedded in the package is missing or incomplete, so this zerokara "
            "installation is damaged: reinstalling it (pip install --force-reinstall zerokara) "
            "restores offline loading."
        )
    return DatasetNotFoundError("\n".join(lines), searched)


# --------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------


def _package_version() -> str:
    """zerokara's version, found without importing the rest of the package."""
    package = sys.modules.get("zerokara")
    version = getattr(package, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        import re

        text = Path(__file__).with_name("_version.py").read_text(encoding="utf-8")
        match = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        from importlib.metadata import version as metadata_version

        return metadata_version("zerokara")
    except Exception:  # not installed: any failure just means "unknown"
        return "unknown"


def _user_agent() -> str:
    return f"zerokara/{_package_version()} Python-urllib/{sys.version_info[0]}.{sys.version_info[1]}"


class _NoBar:
    """Stands in for tqdm when it is not installed."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    # disable is left at its default so that TQDM_DISABLE=1 turns it off.
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


def _download_missing(spec: _Spec, folder: Path, missing: list) -> list:
    """Download each missing file into ``folder``; return failure notes.

    Mirrors are tried in order for each file. The first file that no mirror
    delivers stops the whole download (the network is most likely down);
    files already completed stay, verified, for the next attempt.
    """
    import http.client

    for stem in missing:
        failures = []
        for base in spec.mirrors:
            url = base + stem + ".gz"
            try:
                _fetch(spec, stem, url, folder / (stem + ".gz"))
                break
            except (OSError, ValueError, http.client.HTTPException) as exc:
                # OSError covers URLError, HTTPError, timeouts, resets and a
                # cache folder we cannot write; ValueError our DatasetError.
                failures.append(f"{url}: {type(exc).__name__}: {exc}")
        else:
            return failures
    return []


def _fetch(spec: _Spec, stem: str, url: str, dest: Path) -> None:
    """Download ``url`` to ``dest``: temporary file, verify, rename.

    Whatever happens before the rename (an error, a wrong checksum, Ctrl-C)
    removes the temporary file, so ``dest`` either does not exist or is a
    complete, verified file.
    """
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    tmp, tmp_path = _new_file_beside(dest, ".part")
    try:
        with tmp:
            with _urlopen(request, timeout=_TIMEOUT) as response:
                _copy_with_progress(response, tmp, dest.name)
            _sync(tmp)
        try:
            _, actual = _read_idx(tmp_path, _KIND[stem])
        except DatasetError as exc:
            raise DatasetError(dest, f"the file downloaded from {url} is not valid: {exc.reason}") from exc
        expected = spec.sha256[stem]
        if actual != expected:
            # Downloads are always verified: verify=False is for the user's
            # own folders, never for what a mirror serves.
            raise ChecksumError(
                dest,
                expected,
                actual,
                f"the file downloaded from {url} has SHA-256 {actual} (decompressed), "
                f"expected {expected}; it was not saved",
            )
        os.replace(tmp_path, dest)
    except BaseException:
        try:
            tmp_path.unlink()
        except OSError:
            pass
        raise


def _copy_with_progress(response: Any, out: IO[bytes], name: str) -> None:
    """Copy the response body to ``out`` with a byte progress bar."""
    headers = getattr(response, "headers", None)
    length_text = headers.get("Content-Length") if headers is not None else None
    length = int(length_text) if length_text and length_text.isdigit() else None
    bar = _progress_bar(length, name)
    received = 0
    try:
        while True:
            chunk = response.read(1 << 16)
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    if length is not None and received != length:
        raise ConnectionError(f"received {received} bytes, but the server announced {length}")


# --------------------------------------------------------------------------
# The decoded-array cache
# --------------------------------------------------------------------------

_cache_warning_shown = False


def _warn_cache_unwritable(folder: Path, exc: OSError) -> None:
    """Warn once per process: an unwritable cache costs speed, never an error."""
    global _cache_warning_shown
    if _cache_warning_shown:
        return
    _cache_warning_shown = True
    warnings.warn(
        f"zerokara could not write its array cache in {folder} ({type(exc).__name__}: {exc}); "
        f"data still loads, but every load parses the files again. Set XDG_CACHE_HOME "
        f"to a writable folder to make reloads fast.",
        RuntimeWarning,
        stacklevel=6,
    )


def _new_file_beside(path: Path, suffix: str) -> tuple[IO[bytes], Path]:
    """Create a new temporary file in ``path``'s folder, open for writing.

    The file gets the mode a plain ``open()`` gives (0o666 less the umask),
    as every file zerokara writes does (``zerokara.trainer.atomic_write``);
    one made by ``tempfile`` would be private (0o600) and stay so after the
    rename. Asking for 0o666 at creation lets the system apply the umask,
    which is then never read (reading it means setting it for a moment, for
    every thread). trainer is not imported: this module depends on nothing
    else in zerokara.
    """
    import secrets

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{suffix}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.fdopen(os.open(tmp, flags, 0o666), "wb"), tmp


def _sync(fh: IO[bytes]) -> None:
    """Flush ``fh`` to the disk: a rename that outlives a power cut then names complete data."""
    fh.flush()
    os.fsync(fh.fileno())


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through a temporary file in its folder, synced, and a rename.

    Readers (another process loading at the same time) see either the old
    file or the complete new one, never a partial one, and so does whoever
    looks after a crash or a power cut. ``zerokara.trainer.atomic_write``
    (results) is this function too.
    """
    tmp, tmp_path = _new_file_beside(path, ".tmp")
    try:
        with tmp:
            write(tmp)
            _sync(tmp)
        os.replace(tmp_path, path)
    except BaseException:
        try:
            tmp_path.unlink()
        except OSError:
            pass
        raise


def _stat_signature(path: Path) -> tuple[list, bool]:
    """The stat fields that change when a file's content changes.

    Returns the signature and whether it may be recorded: a file changed in
    the last few seconds could be rewritten again within one tick of the
    file system's clock, which the signature would not show.
    """
    st = path.stat()
    signature = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_SECONDS * 1e9
    return signature, settled


class _ArrayCache:
    """``.npy`` copies of the decoded arrays, keyed by the sources' SHA-256.

    ``index.json`` maps each source file's resolved path to its stat
    signature and the SHA-256 found when it was last parsed, so a warm load
    knows the checksums from four ``stat`` calls instead of decompressing
    and hashing 55 MB. Any problem reading the cache is a cache miss; any
    problem writing it is a warning.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index_path = folder / "index.json"
        self._index: dict | None = None
        self._rejected: set = set()  # keys whose .npy files exist but are bad

    def _read_index(self) -> dict:
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = index.get("files") if isinstance(index, dict) else None
        return files if isinstance(files, dict) else {}

    def known_sha256(self, path: Path) -> str | None:
        """The recorded SHA-256 of ``path`` if it has not changed since."""
        if self._index is None:
            self._index = self._read_index()
        entry = self._index.get(str(path.resolve()))
        if not isinstance(entry, dict):
            return None
        signature, _ = _stat_signature(path)
        sha = entry.get("sha256")
        return sha if entry.get("stat") == signature and isinstance(sha, str) else None

    @staticmethod
    def key(spec: _Spec, shas: dict) -> str:
        joined = ",".join(shas[stem] for stem in _FILES)
        return hashlib.sha256(f"{spec.name}:{joined}".encode()).hexdigest()[:16]

    def _npy_path(self, spec: _Spec, key: str, stem: str) -> Path:
        return self.folder / f"{spec.name}-{key}-{_CACHE_STEM[stem]}.npy"

    def load(self, spec: _Spec, key: str, map_images: bool = False) -> dict | None:
        """The four arrays, or None if any is missing or implausible.

        With ``map_images`` the image arrays are memory-mapped read-only:
        when they are about to be converted to float anyway, reading them
        straight from the page cache saves copying 55 MB first.
        """
        arrays = {}
        for stem in _FILES:
            mmap_mode = "r" if map_images and _KIND[stem] == "images" else None
            try:
                arrays[stem] = np.load(self._npy_path(spec, key, stem), mmap_mode=mmap_mode, allow_pickle=False)
            except FileNotFoundError:
                return None
            except (OSError, ValueError, EOFError):  # damaged, or not plain uint8 data
                self._rejected.add(key)
                return None
        if not _consistent(arrays):
            self._rejected.add(key)
            return None
        return arrays

    def store(self, spec: _Spec, key: str, arrays: dict, files: dict, shas: dict) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stem in _FILES:
                path = self._npy_path(spec, key, stem)
                # The name is the content's checksum: an existing file is
                # already right unless load() found it bad.
                if path.is_file() and key not in self._rejected:
                    continue
                _atomic_write(path, lambda f, a=arrays[stem]: np.save(f, a, allow_pickle=False))
            # Re-read to keep entries another process added meanwhile, and
            # drop entries for files that no longer exist.
            index = {p: e for p, e in self._read_index().items() if os.path.exists(p)}
            for stem, path in files.items():
                signature, settled = _stat_signature(path)
                if settled:
                    index[str(path.resolve())] = {"stat": signature, "sha256": shas[stem]}
            text = json.dumps({"version": 1, "files": index}, indent=1, sort_keys=True)
            _atomic_write(self.index_path, lambda f: f.write(text.encode("utf-8")))
            self._index = index
        except OSError as exc:
            _warn_cache_unwritable(self.folder, exc)


def _consistent(arrays: dict) -> bool:
    """Whether cached arrays have the shapes and dtypes the parser produces."""
    for images_stem, labels_stem in ((_TRAIN_IMAGES, _TRAIN_LABELS), (_TEST_IMAGES, _TEST_LABELS)):
        images, labels = arrays[images_stem], arrays[labels_stem]
        if not (
            images.dtype == np.uint8
            and images.ndim == 3
            and images.shape[1:] == (_ROWS, _COLS)
            and labels.dtype == np.uint8
            and labels.ndim == 1
            and labels.shape[0] == images.shape[0]
            and (labels.size == 0 or labels.max() < _NUM_CLASSES)
        ):
            return False
    return True


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def _checksum_error(spec: _Spec, stem: str, path: Path, actual: str, place: _Place) -> ChecksumError:
    expected = spec.sha256[stem]
    # A known file in the wrong place (Fashion-MNIST in the MNIST folder, or
    # test images named as training images) deserves to be named.
    known = [
        f"{other.title}'s {other_stem}"
        for other in (_MNIST, _FASHION_MNIST)
        for other_stem, sha in other.sha256.items()
        if sha == actual
    ]
    what = f"it is {known[0]}" if known else "the file is damaged or holds different data"
    return ChecksumError(
        path,
        expected,
        actual,
        f"SHA-256 of the decompressed content is {actual}, but the official {spec.title} "
        f"{stem} has {expected}: {what}. To fix it, {place.hint}; or pass verify=False "
        f"to {spec.loader}() to load different data in the same IDX format on purpose.",
    )


def _load_arrays(spec: _Spec, files: dict, place: _Place, verify: bool, normalize: bool) -> dict:
    """The four uint8 arrays: from the .npy cache when it is valid, else parsed.

    With ``normalize`` the cached images may come back memory-mapped and
    read-only, since they will only be read to make the float32 copy.
    """
    cache = _ArrayCache(_cache_root() / "npy")
    shas = {stem: cache.known_sha256(path) for stem, path in files.items()}
    if all(shas.values()):
        if verify:
            for stem, sha in shas.items():
                if sha != spec.sha256[stem]:
                    raise _checksum_error(spec, stem, files[stem], sha, place)
        arrays = cache.load(spec, _ArrayCache.key(spec, shas), map_images=normalize)
        if arrays is not None:
            return arrays

    arrays = {}
    for stem in _FILES:
        arrays[stem], shas[stem] = _read_idx(files[stem], _KIND[stem])
        if verify and shas[stem] != spec.sha256[stem]:
            raise _checksum_error(spec, stem, files[stem], shas[stem], place)
    for images_stem, labels_stem in ((_TRAIN_IMAGES, _TRAIN_LABELS), (_TEST_IMAGES, _TEST_LABELS)):
        n_images, n_labels = len(arrays[images_stem]), len(arrays[labels_stem])
        if n_images != n_labels:
            raise DatasetError(
                files[labels_stem],
                f"holds {n_labels} labels, but {files[images_stem].name} holds "
                f"{n_images} images; the two files must have the same count",
            )
    cache.store(spec, _ArrayCache.key(spec, shas), arrays, files, shas)
    return arrays


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset and cpusets
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _scale_to_unit(images: np.ndarray) -> np.ndarray:
    """``images / 255`` as a new float32 array, bit for bit the book's.

    The book does ``x = x.astype(np.float32); x /= 255.0``: an exact uint8 ->
    float32 cast, then a float32 division. ``np.divide(..., dtype=float32)``
    does the same cast and division in one pass with no intermediate copy.

    The rows are split over a few threads (ufuncs release the GIL), so the
    arithmetic and the first touch of the 188 MB output run in parallel:
    about 25 ms instead of 50 ms for MNIST's training set on 2 cores. Each
    element is computed the same way whatever the split, so the result does
    not depend on the number of threads.
    """
    x = np.empty(images.shape, dtype=np.float32)
    n = len(images)
    workers = min(_available_cpus(), 4) if images.size >= (1 << 22) else 1
    edges = [n * i // workers for i in range(workers + 1)]
    errors: list = []

    def divide(lo: int, hi: int) -> None:
        try:
            np.divide(images[lo:hi], np.float32(255.0), out=x[lo:hi], dtype=np.float32)
        except BaseException as exc:  # re-raised below: never return half-filled data
            errors.append(exc)

    if workers > 1:
        import threading

        threads = [threading.Thread(target=divide, args=(edges[i], edges[i + 1])) for i in range(1, workers)]
        for thread in threads:
            thread.start()
        divide(edges[0], edges[1])
        for thread in threads:
            thread.join()
    else:
        divide(0, n)
    if errors:
        raise errors[0]
    return x


def _book_format(
    images: np.ndarray, labels: np.ndarray, normalize: bool, flatten: bool, one_hot_label: bool
) -> Split:
    """Convert one split the way the book's ``load_mnist`` does."""
    n = images.shape[0]
    x = _scale_to_unit(images) if normalize else images
    x = x.reshape(n, _ROWS * _COLS) if flatten else x.reshape(n, 1, _ROWS, _COLS)
    if one_hot_label:
        # The book builds float64 rows (np.zeros((N, 10))); float32 holds 0
        # and 1 exactly, at half the memory, and mixes with float32 images.
        t = np.eye(_NUM_CLASSES, dtype=np.float32)[labels]
    else:
        t = labels
    return x, t


def _check_flag(name: str, value: Any) -> None:
    # The book's flags are positional, so a folder passed first would be
    # taken as normalize=<truthy>; say so instead of ignoring it.
    if isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{name} must be True or False, got {value!r}; to load from a folder, "
            f"pass it as data_dir={value!r}"
        )


def _load(
    spec: _Spec,
    normalize: bool,
    flatten: bool,
    one_hot_label: bool,
    data_dir: PathLike | None,
    download: bool,
    verify: bool,
) -> tuple[Split, Split]:
    for name, value in (("normalize", normalize), ("flatten", flatten), ("one_hot_label", one_hot_label)):
        _check_flag(name, value)
    files, place = _locate(spec, data_dir, bool(download))
    arrays = _load_arrays(spec, files, place, bool(verify), bool(normalize))
    # Pop each uint8 array as it is converted, so that at most one of them
    # is alive next to the float copies.
    train = _book_format(arrays.pop(_TRAIN_IMAGES), arrays.pop(_TRAIN_LABELS), normalize, flatten, one_hot_label)
    test = _book_format(arrays.pop(_TEST_IMAGES), arrays.pop(_TEST_LABELS), normalize, flatten, one_hot_label)
    return train, test


# The sections the two loaders share, written once: ``_loader_doc`` puts
# them into each docstring in place of its line ``{sections}``, with the
# data set's folder name for ``{name}``.
_LOADER_SECTIONS = """\
Parameters
----------
normalize : bool, default True
    Scale pixels to float32 in [0, 1]; otherwise keep uint8 0..255.
flatten : bool, default True
    Images as rows of 784 pixels; otherwise as arrays of shape (1, 28, 28).
one_hot_label : bool, default False
    Labels as one-hot rows of 10; otherwise as integers 0..9.
data_dir : str or os.PathLike, optional
    Load from this folder only, or from its ``{name}`` subfolder (so the
    folder given as ``$ZEROKARA_DATA`` works too). It must hold the four
    IDX files, each gzip-compressed (``train-images-idx3-ubyte.gz``) or
    not (``train-images-idx3-ubyte``). Nothing is downloaded into it.
download : bool, default True
    If no copy is found, download the missing files into the user cache
    (``$XDG_CACHE_HOME/zerokara/{name}``, default
    ``~/.cache/zerokara/{name}``) with a byte progress bar (tqdm;
    ``TQDM_DISABLE=1`` hides it). Downloads are always verified.
verify : bool, default True
    Check the SHA-256 of each file's decompressed content against the
    official one. Pass False to load other data in the same format (a
    subset, a variant); the structure checks still apply.

Returns
-------
(x_train, t_train), (x_test, t_test) : tuple of two (ndarray, ndarray) pairs
    N is 60000 for the training set and 10000 for the test set (other
    counts for a folder loaded with ``verify=False``).

    - ``x`` : ndarray of shape (N, 784) if ``flatten`` else
      (N, 1, 28, 28); float32 in [0, 1] if ``normalize`` (bit for bit
      the book's ``x.astype(np.float32) / 255.0``), else uint8 0..255.
    - ``t`` : ndarray of shape (N,), uint8 with values 0..9; or, if
      ``one_hot_label``, of shape (N, 10), float32 rows of zeros with a
      single 1. (The book's one-hot rows are float64; float32 holds the
      same 0 and 1 exactly, at half the memory.)

    Every array is new, writable and owned by the caller.

Raises
------
DatasetNotFoundError
    A FileNotFoundError: no folder holds all four files and they cannot
    be downloaded. The message lists every place looked and the ways
    to supply the data.
DatasetError
    A ValueError: a file is malformed (wrong magic number or image
    size, truncated, trailing bytes, a label outside 0..9, image and
    label counts that differ). The message starts with the file's path.
ChecksumError
    A DatasetError: ``verify`` is true and a file's decompressed
    SHA-256 is not the official one. The message names the file, both
    sums and what to do.
TypeError
    A flag was given a path (the book's flags are positional), or
    ``data_dir`` is not a path.
"""


def _loader_doc(spec: _Spec) -> Callable[[Callable], Callable]:
    """Fill in a loader's docstring: its line ``{sections}`` becomes ``_LOADER_SECTIONS``."""

    def fill(loader: Callable) -> Callable:
        doc = loader.__doc__
        if doc:  # None under python -OO
            # Indent the sections as the marker is (Python 3.13 strips
            # docstrings' common indentation when it compiles them).
            indent = doc[: doc.index("{sections}")].rpartition("\n")[2]
            lines = _LOADER_SECTIONS.format(name=spec.name).splitlines()
            sections = "\n".join(indent + line if line else line for line in lines)
            loader.__doc__ = doc.replace(indent + "{sections}", sections, 1)
        return loader

    return fill


@_loader_doc(_MNIST)
def load_mnist(
    normalize: bool = True,
    flatten: bool = True,
    one_hot_label: bool = False,
    *,
    data_dir: PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> tuple[Split, Split]:
    """Load MNIST as the book's ``load_mnist`` does (chapter 3.6.1).

    Works offline: a copy of MNIST ships inside the package. The first call
    parses and verifies the files and caches the decoded arrays as ``.npy``
    in the user cache; later calls (in any process) read the cache.

    {sections}

    Notes
    -----
    Files are looked for in ``data_dir`` (only there, when given), then in
    ``$ZEROKARA_DATA/mnist``, the embedded copy and the user cache, which is
    also where downloads go (mirrors: ``ossci-datasets.s3.amazonaws.com``
    then ``storage.googleapis.com/cvdf-datasets``).

    The MNIST database is by Yann LeCun, Corinna Cortes and Christopher J.C.
    Burges, licensed CC BY-SA 3.0 (see ``zerokara/_data/mnist/README.md``).

    Examples
    --------
    >>> (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, flatten=True)
    >>> x_train.shape, x_train.dtype, t_train[:3]
    ((60000, 784), dtype('float32'), array([5, 0, 4], dtype=uint8))
    """
    return _load(_MNIST, normalize, flatten, one_hot_label, data_dir, download, verify)


@_loader_doc(_FASHION_MNIST)
def load_fashion_mnist(
    normalize: bool = True,
    flatten: bool = True,
    one_hot_label: bool = False,
    *,
    data_dir: PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> tuple[Split, Split]:
    """Load Fashion-MNIST (Zalando Research) with the same API as ``load_mnist``.

    Same shapes, dtypes and classes count as MNIST: 28x28 grey images of
    clothing in 10 classes (0 T-shirt/top, 1 trouser, 2 pullover, 3 dress,
    4 coat, 5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot). It is not
    embedded (30 MB).

    {sections}

    Notes
    -----
    Files are looked for in ``data_dir`` (only there, when given), then in
    ``$ZEROKARA_DATA/fashion-mnist``, ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist`` package) and the user cache, which
    is also where downloads go (mirror:
    ``storage.googleapis.com/tensorflow/tf-keras-datasets``).

    Fashion-MNIST is by Zalando SE, licensed MIT.
    """
    return _load(_FASHION_MNIST, normalize, flatten, one_hot_label, data_dir, download, verify)
