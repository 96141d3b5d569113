import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_backend.video.patches import video_patches, video_token_count
from ml_backend.video.sampling import (
    frame_count,
    frame_indices,
    frame_max_pixels,
    plan_sampling,
    smart_resize,
    training_plan,
)


def test_spec_example_20s_1080p_gives_40_frames_at_560x1008():
    plan = plan_sampling(600, 30.0, 1080, 1920)
    assert plan.num_frames == 40
    assert (plan.height, plan.width) == (560, 1008)
    assert plan.indices[0] == 0 and plan.indices[-1] == 599
    assert plan.seconds_per_grid == pytest.approx(1.0)
    # ~14.4k visual tokens: 20 temporal patches x (560/14 * 1008/14) / 4
    assert 20 * (40 * 72) // 4 == 14400


@pytest.mark.parametrize(
    "total, fps, expected",
    [
        (120, 29.97, 8),  # 4 s -> 8 frames
        (250, 25.0, 20),  # 10 s -> 20 frames
        (132, 25.0, 10),  # 5.28 s -> 10.56 -> floor to even
        (5, 25.0, 4),  # very short: at least 4 frames
        (3, 25.0, 2),  # fewer frames than the minimum: all of them, even
        (100_000, 30.0, 768),  # capped
    ],
)
def test_frame_count(total, fps, expected):
    assert frame_count(total, fps) == expected


@pytest.mark.parametrize("total", [0, 1])
def test_frame_count_rejects_videos_without_two_frames(total):
    with pytest.raises(ValueError, match="at least 2"):
        frame_count(total, 25.0)


def test_frame_count_rejects_bad_fps():
    with pytest.raises(ValueError, match="frame rate"):
        frame_count(100, 0.0)


def test_frame_indices_are_spread_from_first_to_last():
    assert frame_indices(10, 4) == (0, 3, 6, 9)
    assert frame_indices(600, 40)[1] == 15


def test_frame_indices_use_float32_linspace_like_the_reference():
    # From ~8 minutes at 25 fps float32 and float64 spacing pick different frames; the
    # reference (torch.linspace, float32) takes frame 8496 of 12342 where float64 gives 8495.
    indices = frame_indices(12342, 768)
    assert 8496 in indices and 8495 not in indices
    float64 = [int(i) for i in np.round(np.linspace(0, 12341, 768))]
    assert [a - b for a, b in zip(indices, float64) if a != b] == [1]
    assert indices[0] == 0 and indices[-1] == 12341 and len(set(indices)) == 768


def test_float_pixel_budget_changes_the_size_where_truncation_would():
    # 500 frames (250 s) of 720x576: budget 361267.2 pixels; an int() budget gives 532x644
    plan = plan_sampling(500 * 25 // 2, 25.0, 576, 720)
    assert plan.num_frames == 500
    assert (plan.height, plan.width) == (532, 672)


@pytest.mark.parametrize("total, video_fps, count", [
    (4, 25.0, 4),  # four frames in all: every one of them
    (35, 10.0, 7 - 1),  # 7 wanted: odd counts round down to even, never up
    (87, 25.0, 6),  # 6.96 wanted
    (10, 1.0, 10),  # slower than 2 fps: all frames, the limit is total_frames itself
    (9, 1.0, 8),  # ... floored to even
])
def test_frame_count_edge_cases(total, video_fps, count):
    assert frame_count(total, video_fps) == count


def test_seconds_per_grid_is_the_reference_spacing_unless_asked():
    assert plan_sampling(250, 25.0, 272, 640).seconds_per_grid == 1.0
    assert plan_sampling(300, 30.0, 272, 640).seconds_per_grid == 1.0
    # the true spacing: 2 frames / sampled fps (20 frames over 10 s: 2 fps -> 1 s; 60 fps clip: same)
    assert plan_sampling(250, 25.0, 272, 640, second_per_grid="sampled").seconds_per_grid == pytest.approx(1.0)
    slow = plan_sampling(10, 1.0, 272, 640, second_per_grid="sampled")  # 10 frames over 10 s
    assert slow.seconds_per_grid == pytest.approx(2.0)


def test_pixel_budget_shrinks_with_many_frames():
    assert frame_max_pixels(40, min_pixels=100352, max_pixels=602112, total_pixels=90316800) == 602112
    many = frame_max_pixels(766, min_pixels=100352, max_pixels=602112, total_pixels=90316800)
    assert many == 90316800 / 766 * 2  # a float, as in the reference: no truncation
    tiny_budget = frame_max_pixels(768, min_pixels=100352, max_pixels=602112, total_pixels=1000)
    assert tiny_budget == int(100352 * 1.05)


@settings(max_examples=300, deadline=None)
@given(h=st.integers(16, 5000), w=st.integers(16, 5000))
def test_smart_resize_invariants(h, w):
    if max(h, w) / min(h, w) > 200:
        return
    min_px, max_px = 128 * 28 * 28, 768 * 28 * 28
    new_h, new_w = smart_resize(h, w, min_pixels=min_px, max_pixels=max_px)
    assert new_h % 28 == 0 and new_w % 28 == 0
    assert new_h * new_w <= max_px
    assert new_h * new_w >= min_px or new_h == 28 or new_w == 28
    if max(h, w) / min(h, w) <= 10:  # aspect kept up to rounding to the 28-pixel grid
        assert abs(math.log((new_h / new_w) / (h / w))) < 0.5


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000, min_pixels=1, max_pixels=10**9)


def test_golden_patches_are_reproduced_exactly(golden_path):
    golden = np.load(golden_path)
    for case in ("t4_56x84", "t5_84x56", "t2_112x112"):
        patches, grid = video_patches(golden[f"{case}_frames"])
        expected = golden[f"{case}_pixel_values_videos"]
        assert patches.dtype == np.float32
        assert patches.shape == expected.shape
        assert np.array_equal(patches, expected), case
        assert grid.tolist() == golden[f"{case}_video_grid_thw"].reshape(-1).tolist()


def test_odd_frame_count_repeats_last_frame(golden_path):
    frames = np.load(golden_path)["t5_84x56_frames"]
    padded, _ = video_patches(np.concatenate([frames, frames[-1:]]))
    odd, grid = video_patches(frames)
    assert np.array_equal(odd, padded)
    assert grid[0] == 3
    assert video_token_count(grid) == 3 * 6 * 4 // 4


@pytest.mark.parametrize("frames_count", [1, 2, 7, 20])
def test_uint8_table_lookup_equals_the_arithmetic_bit_for_bit(frames_count):
    """uint8 frames take a 256-value table; any other dtype the arithmetic itself: the same float32."""
    frames = np.random.default_rng(frames_count).integers(0, 256, (frames_count, 56, 84, 3), dtype=np.uint8)
    looked_up, grid = video_patches(frames)
    computed, same_grid = video_patches(frames.astype(np.int16))
    assert looked_up.dtype == computed.dtype == np.float32 and np.array_equal(grid, same_grid)
    assert np.array_equal(looked_up.view(np.uint32), computed.view(np.uint32))


def test_patches_reject_sizes_not_multiple_of_28():
    with pytest.raises(ValueError, match="multiple of 28"):
        video_patches(np.zeros((2, 30, 56, 3), np.uint8))
    with pytest.raises(ValueError, match="expected"):
        video_patches(np.zeros((2, 28, 28), np.uint8))


def test_training_plan_draws_sorted_frames_of_the_2fps_sample_squashed():
    import random

    plan = plan_sampling(600, 30.0, 1080, 1920)  # 40 frames at 560x1008
    first = training_plan(plan, side=504, frames=14, rng=random.Random(7))
    assert (first.height, first.width) == (504, 504) and first.num_frames == 14
    assert list(first.indices) == sorted(first.indices) and set(first.indices) <= set(plan.indices)
    assert first.seconds_per_grid == plan.seconds_per_grid == 1.0
    rng = random.Random(7)
    again = training_plan(plan, side=504, frames=14, rng=rng)
    assert again.indices == first.indices  # seeded: reproducible
    redrawn = training_plan(plan, side=504, frames=14, rng=rng)
    assert redrawn.indices != again.indices  # the next step draws anew
    few = plan_sampling(120, 29.97, 144, 176)  # 8 frames: all of them
    assert training_plan(few, side=56, frames=14, rng=random.Random(0)).indices == few.indices
    with pytest.raises(ValueError, match="multiple of 28"):
        training_plan(plan, side=500, frames=14, rng=random.Random(0))
