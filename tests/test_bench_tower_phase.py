"""bench/tower_phase.py's overlapping slices, by hand: which frames each slice holds and which slices an
event is labelled in."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from cot_rm.media.video import Sampling

_BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(_BENCH))  # tower_phase imports judge_ceiling as a sibling
_SPEC = importlib.util.spec_from_file_location("tower_phase", _BENCH / "tower_phase.py")
tp = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tp)

EIGHT = Sampling(fps=None, num_frames=8, min_pixels=12544, max_pixels=12544)


def test_overlap_indices_pair_each_sampled_frame_with_the_next():
    # The even sampling of 24 frames: 0 3 7 10 13 16 20 23; seven slices of neighbours.
    assert tp.overlap_indices(24, 8.0, EIGHT) == [0, 3, 3, 7, 7, 10, 10, 13, 13, 16, 16, 20, 20, 23]


def test_overlap_events_put_a_teleport_only_in_the_slice_that_holds_its_jump():
    shown = tp.overlap_indices(24, 8.0, EIGHT)
    meta = {
        "defects": [
            {"type": "teleport", "frames": [9, 10]},  # the jump lies between shown frames 7 and 10
            {"type": "flicker", "frames": [10]},  # frame 10 is in slices (7, 10) and (10, 13)
            {"type": "flicker", "frames": [23]},  # a second one of the same kind: last slice
        ]
    }
    target = tp.overlap_slice_events(meta, shown)
    teleport, flicker = tp.EVENTS.index("teleport"), tp.EVENTS.index("flicker")
    assert target.shape == (7, len(tp.EVENTS))
    assert target[:, teleport].tolist() == [0, 0, 1, 0, 0, 0, 0]
    assert target[:, flicker].tolist() == [0, 0, 1, 1, 0, 0, 1]
    assert target.sum() == 4


def test_motion_summary_counts_direction_changes_and_the_largest_jump():
    sure = torch.full((1, 4, 5), -30.0)  # near one-hot: right, right, left, left
    for i, d in enumerate([1, 1, 2, 2]):
        sure[0, i, d] = 30.0
    out = torch.cat([sure, torch.tensor([[[1.0], [1.0], [1.0], [3.0]]])], 2)
    s = tp.motion_summary(out)[0]
    assert s.shape == (10,)
    assert abs(s[0] - 1.0) < 1e-4  # one reversal between the four steps
    assert s[1] < 1e-4  # no slice stands still
    assert torch.allclose(s[2:6], torch.tensor([0.5, 0.5, 0.0, 0.0]), atol=1e-4)  # mean direction
    assert torch.allclose(s[6:], torch.tensor([3.0, 1.0, 1.0, 2.0]), atol=1e-4)  # max, min, std, jump
