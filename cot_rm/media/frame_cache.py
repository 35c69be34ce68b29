"""An on-disk cache of preprocessed (sampled + resized) video frames, shared by processes.

Each entry is ONE file, `<key>.npy`: a standard .npy array (T, 3, H, W) uint8 followed by a UTF-8 JSON
object with the sampling metadata. One file per entry means one `os.replace` publishes it atomically,
so concurrent fillers never expose a half-written entry (`np.load` still reads the array; the JSON
after it is ignored by NumPy).

The key hashes (absolute path, size, mtime_ns, sampling parameters incl. pixel budget and model family,
CACHE_VERSION): an edited video or a change of sampling misses instead of serving stale frames.
Least-recently-used entries (by file mtime, refreshed on every hit) are evicted past `max_bytes`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Bump when decoding or resizing changes what an entry holds: old entries then simply miss.
CACHE_VERSION = 3  # 2: frames turned upright by the display rotation; 3: RGB at full size, then resized
DEFAULT_MAX_BYTES = 16 * 1024**3
SUFFIX = ".npy"
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 3600  # a temp file this old belongs to a writer that died mid-write


def file_identity(path: str | os.PathLike) -> dict:
    """A file's identity for anything derived from it: absolute path, size, mtime (OSError if missing)."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def default_cache_dir() -> Path:
    """$COT_RM_FRAME_CACHE, else $XDG_CACHE_HOME/cot-rm/frames, else ~/.cache/cot-rm/frames."""
    if env := os.environ.get("COT_RM_FRAME_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cot-rm" / "frames"


class FrameCache:
    """Frames + metadata on disk, keyed by `key(path, params)`. Best effort: I/O failures only log."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0

    # -- keys ---------------------------------------------------------------------------------------

    def key(self, path: str | os.PathLike, params: Mapping[str, Any]) -> str:
        """Hash of the file's identity (absolute path, size, mtime_ns) and the sampling `params`."""
        ident = {"version": CACHE_VERSION, **file_identity(path), "params": dict(params)}
        blob = json.dumps(ident, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def _file(self, key: str) -> Path:
        return self.root / f"{key}{SUFFIX}"

    # -- read / write -------------------------------------------------------------------------------

    def get(self, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """(frames, metadata) or None. A hit refreshes the entry's mtime, its LRU clock."""
        file = self._file(key)
        try:
            with open(file, "rb") as f:
                frames = np.lib.format.read_array(f, allow_pickle=False)
                meta = json.loads(f.read().decode())
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError) as err:  # unreadable entry: drop it so it gets rebuilt
            log.warning("frame cache: dropping unreadable entry %s (%s)", file, err)
            _unlink(file)
            self.misses += 1
            return None
        try:
            os.utime(file)
        except OSError:
            pass  # evicted meanwhile by another process; the data we read is still good
        self.hits += 1
        return frames, meta

    def put(self, key: str, frames: np.ndarray, meta: Mapping[str, Any]) -> bool:
        """Store an entry atomically (temp file in the same directory + os.replace); then evict."""
        size = frames.nbytes
        if size > self.max_bytes:
            return False  # would evict everything, itself included
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=SUFFIX, dir=self.root)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(frames), allow_pickle=False)
                    f.write(json.dumps(dict(meta)).encode())
                os.replace(tmp, self._file(key))
            except BaseException:
                _unlink(Path(tmp))
                raise
        except OSError as err:
            log.warning("frame cache: cannot write to %s (%s); continuing without caching", self.root, err)
            return False
        self.evict()
        return True

    # -- size management ----------------------------------------------------------------------------

    def _entries(self) -> list[tuple[int, int, Path]]:
        """(mtime_ns, size, file) per entry; removes temp files left by dead writers."""
        out = []
        try:
            scan = list(os.scandir(self.root))
        except FileNotFoundError:
            return out
        now = time.time()
        for e in scan:
            try:
                st = e.stat()
            except FileNotFoundError:
                continue  # removed by another process while we looked
            if e.name.startswith(TMP_PREFIX):
                if now - st.st_mtime > STALE_TMP_S:
                    _unlink(Path(e.path))
            elif e.name.endswith(SUFFIX):
                out.append((st.st_mtime_ns, st.st_size, Path(e.path)))
        return out

    def size_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def evict(self) -> int:
        """Delete least-recently-used entries until the total is within `max_bytes`; bytes freed."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, file in entries:
            if total - freed <= self.max_bytes:
                break
            _unlink(file)
            freed += size
        return freed

    def clear(self) -> None:
        for _, _, file in self._entries():
            _unlink(file)


def _unlink(file: Path) -> None:
    try:
        file.unlink()
    except FileNotFoundError:
        pass
