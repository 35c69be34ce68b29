"""cot_rm.media.frame_cache: hits, keys, atomic concurrent fills, LRU eviction, and the CLI's --no-cache."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from videogen import index_frame

from cot_rm.media.frame_cache import TMP_PREFIX, FrameCache, default_cache_dir
from cot_rm.media.video import Sampling, read_video_numpy
from cot_rm.media.writer import write_video

SMALL = Sampling(num_frames=4, max_pixels=56 * 56)


@pytest.fixture()
def clip(tmp_path):
    return write_video(tmp_path / "clip.mp4", [index_frame(i, 48, 64) for i in range(24)], 12, "libx264")


def entries(root) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_hit_returns_identical_frames_without_decoding(tmp_path, clip):
    cache = FrameCache(tmp_path / "cache")
    cold = read_video_numpy(clip, SMALL, cache)
    warm = read_video_numpy(clip, SMALL, cache)
    assert cold.decoded_frames > 0 and warm.decoded_frames == 0
    assert (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(cold.frames, warm.frames) and warm.frames.dtype == np.uint8
    assert warm.info() == cold.info()
    assert warm.processor_metadata() == cold.processor_metadata()
    # The entry is a plain .npy that NumPy reads (the metadata trails the array).
    (name,) = entries(tmp_path / "cache")
    assert np.array_equal(np.load(tmp_path / "cache" / name), cold.frames)


def test_key_changes_with_sampling_and_file_identity(tmp_path, clip):
    cache = FrameCache(tmp_path / "cache")
    base = cache.key(clip, SMALL.to_dict())
    assert cache.key(clip, SMALL.to_dict()) == base
    for other in [Sampling(num_frames=6, max_pixels=56 * 56), Sampling(num_frames=4, max_pixels=112 * 112),
                  Sampling(num_frames=4, max_pixels=56 * 56, family="qwen3_vl")]:  # fmt: skip
        assert cache.key(clip, other.to_dict()) != base
    st = os.stat(clip)
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert cache.key(clip, SMALL.to_dict()) != base
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(clip.read_bytes())
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.key(copy, SMALL.to_dict()) != base  # same bytes and mtime, other path


def test_rewritten_video_is_not_served_stale(tmp_path, clip):
    cache = FrameCache(tmp_path / "cache")
    first = read_video_numpy(clip, SMALL, cache)
    write_video(clip, [index_frame(100 + i, 48, 64) for i in range(36)], 12, "libx264")
    second = read_video_numpy(clip, SMALL, cache)
    assert second.decoded_frames > 0 and second.total_frames == 36 and first.total_frames == 24


def _fill(root: str, key_ids: list[int], rounds: int) -> None:
    """Worker: write each key's (deterministic) entry `rounds` times."""
    cache = FrameCache(root)
    for _ in range(rounds):
        for k in key_ids:
            frames = np.full((4, 3, 128, 128), k, np.uint8)
            cache.put(f"{k:064x}", frames, {"k": k})


def test_concurrent_fillers_never_expose_partial_entries(tmp_path, caplog):
    root = tmp_path / "cache"
    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    procs = [ctx.Process(target=_fill, args=(str(root), [0, 1, 2, 3], 25)) for _ in range(4)]
    for p in procs:
        p.start()
    reader = FrameCache(root)
    seen = 0
    with caplog.at_level(logging.WARNING, logger="cot_rm.media.frame_cache"):
        while any(p.is_alive() for p in procs) or seen == 0:
            for k in range(4):
                if (hit := reader.get(f"{k:064x}")) is not None:
                    frames, meta = hit
                    assert frames.shape == (4, 3, 128, 128) and (frames == k).all() and meta == {"k": k}
                    seen += 1
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert not [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert seen > 0
    assert entries(root) == [f"{k:064x}.npy" for k in range(4)]  # no temp files left behind


def test_lru_eviction_under_size_limit(tmp_path):
    frames = np.zeros((2, 3, 64, 64), np.uint8)  # 24576 bytes + header + metadata per entry
    root = tmp_path / "cache"
    cache = FrameCache(root, max_bytes=3 * 25_000)
    for name in "abc":
        cache.put(name * 64, frames, {"name": name})
    assert len(cache) == 3
    # Pin the LRU order explicitly (file timestamps can tie within one clock tick): a < b < c.
    for t, name in enumerate("abc", start=1):
        os.utime(root / f"{name * 64}.npy", ns=(t * 10**9, t * 10**9))
    assert cache.get("a" * 64) is not None  # touching "a" makes it the most recent
    cache.put("d" * 64, frames, {"name": "d"})  # 4 entries > limit: evict the least recent, "b"
    assert entries(root) == [f"{n * 64}.npy" for n in "acd"]
    assert cache.size_bytes() <= cache.max_bytes


def test_oversized_entry_is_not_stored(tmp_path):
    cache = FrameCache(tmp_path / "cache", max_bytes=1000)
    assert cache.put("x" * 64, np.zeros((1, 3, 32, 32), np.uint8), {}) is False
    assert len(cache) == 0


def test_corrupt_entry_is_a_miss_and_removed(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    (root / ("e" * 64 + ".npy")).write_bytes(b"\x93NUMPY garbage")
    cache = FrameCache(root)
    assert cache.get("e" * 64) is None
    assert entries(root) == []


def test_stale_temp_files_are_swept(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    stale, fresh = root / f"{TMP_PREFIX}dead.npy", root / f"{TMP_PREFIX}live.npy"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    FrameCache(root).evict()
    assert entries(root) == [fresh.name]


def test_default_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("COT_RM_FRAME_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "cot-rm" / "frames"
    monkeypatch.setenv("COT_RM_FRAME_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    assert FrameCache().root == tmp_path / "x"


def _cli(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cot_rm.cli", "video-info", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_cli_fills_cache_and_no_cache_bypasses_it(tmp_path, clip):
    root = tmp_path / "cache"
    bypass = _cli(clip, "--cache-dir", root, "--no-cache", "--max-pixels", 3136)
    assert bypass.returncode == 0 and entries(root) == []
    first = _cli(clip, "--cache-dir", root, "--max-pixels", 3136)
    assert first.returncode == 0 and len(entries(root)) == 1
    second = _cli(clip, "--cache-dir", root, "--max-pixels", 3136)
    assert json.loads(second.stdout) == json.loads(first.stdout) == json.loads(bypass.stdout)
