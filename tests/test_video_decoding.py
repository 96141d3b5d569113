import numpy as np
import pytest

from ml_backend.errors import VideoError
from ml_backend.settings import VideoSettings
from ml_backend.video.decoding import decode_video, find_videos, probe_video
from tests.media import SHARED_VIDEO_NAMES, encode_video, make_bad_videos, moving_pattern


@pytest.mark.parametrize("name", SHARED_VIDEO_NAMES)
def test_shared_videos_decode_at_the_planned_size(shared_videos, name):
    video = decode_video(shared_videos / name)
    plan = video.plan
    assert video.frames.dtype == np.uint8
    assert video.frames.shape == (plan.num_frames, plan.height, plan.width, 3)
    assert plan.height % 28 == 0 and plan.width % 28 == 0 and plan.num_frames % 2 == 0
    assert video.frames.std() > 1  # real picture content, not a blank buffer


def test_bikes_sampling_matches_the_reference_arithmetic(shared_videos):
    video = decode_video(shared_videos / "bikes.mp4")  # 250 frames, 25 fps, 640x272
    assert video.probe == probe_video(shared_videos / "bikes.mp4")
    assert (video.probe.total_frames, video.probe.width, video.probe.height) == (250, 640, 272)
    assert video.plan.num_frames == 20
    assert (video.plan.height, video.plan.width) == (280, 644)  # upscaled to reach min_pixels


def test_default_decode_is_full_decode_then_the_reference_resize(shared_videos):
    import decord
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    path = shared_videos / "bigbuckbunny.mp4"  # 1280x720: a real downscale
    video = decode_video(path)
    full = decord.VideoReader(str(path)).get_batch(list(video.plan.indices)).asnumpy()
    expected = resize(torch.from_numpy(full).permute(0, 3, 1, 2), [video.plan.height, video.plan.width],
                      interpolation=InterpolationMode.BICUBIC, antialias=True).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(video.frames, expected)


def test_decoder_scaling_is_opt_in_close_but_not_equal(shared_videos):
    path = shared_videos / "bigbuckbunny.mp4"
    exact = decode_video(path, VideoSettings(max_pixels=200_000))  # 1280x720 -> under half the area
    fast = decode_video(path, VideoSettings(max_pixels=200_000, resize="decoder"))
    assert fast.frames.shape == exact.frames.shape
    difference = np.abs(fast.frames.astype(np.int16) - exact.frames.astype(np.int16))
    assert 0 < difference.mean() < 3.0


def test_resize_is_the_same_frame_by_frame_and_in_a_batch(shared_videos):
    from ml_backend.video.decoding import resize_frames

    frames = decode_video(shared_videos / "bikes.mp4", VideoSettings(max_pixels=100352 * 4)).frames[:5]
    batch = resize_frames(frames, 140, 322)
    one_by_one = np.concatenate([resize_frames(frame[None], 140, 322) for frame in frames])
    assert np.array_equal(batch, one_by_one)


def test_every_frame_sink_sees_each_frame_once_and_changes_nothing(shared_videos):
    path = shared_videos / "carphone_pristine.mp4"  # 120 frames
    seen: list[int] = []
    chunks: list[np.ndarray] = []

    def sink(frames: np.ndarray, first: int) -> None:
        seen.extend(range(first, first + len(frames)))
        chunks.append(frames.copy())

    with_sink = decode_video(path, every_frame=sink)
    assert seen == list(range(120))
    assert np.array_equal(with_sink.frames, decode_video(path).frames)
    every = np.concatenate(chunks)
    assert every.shape == (120, 144, 176, 3)
    import decord

    assert np.array_equal(every[list(with_sink.plan.indices)],
                          decord.VideoReader(str(path)).get_batch(list(with_sink.plan.indices)).asnumpy())


BITS = 10


def _index_video(path, count: int, fps: float):
    """A clip whose frame i shows i in binary: BITS black or white columns (survive compression)."""
    height, width = 64, 16 * BITS
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        for bit in range(BITS):
            if i >> bit & 1:
                frames[i, :, bit * 16:(bit + 1) * 16] = 255
    return encode_video(path, frames, fps=fps)


def _read_indices(frames: np.ndarray) -> list[int]:
    width = frames.shape[2]
    centres = [int((bit + 0.5) * width / BITS) for bit in range(BITS)]
    on = frames[:, frames.shape[1] // 2, centres, :].mean(axis=-1) > 128
    return [int(sum(1 << bit for bit in range(BITS) if row[bit])) for row in on]


@pytest.mark.parametrize("count, fps, expected", [
    (4, 25, [0, 1, 2, 3]),  # four frames: all
    (35, 10, [0, 7, 14, 20, 27, 34]),  # 7 wanted -> 6 (down to even), spread from first to last
    (10, 1, list(range(10))),  # slower than 2 fps: every frame up to the last
    (9, 1, [0, 1, 2, 3, 5, 6, 7, 8]),  # 9 frames -> 8, round half to even at 4.0 / 4.57
    (250, 25, [0, 13, 26, 39, 52, 66, 79, 92, 105, 118, 131, 144, 157, 170, 183, 197, 210, 223, 236, 249]),
])
def test_decoded_frames_are_the_planned_frame_indices(tmp_path, count, fps, expected):
    path = _index_video(tmp_path / f"index_{count}_{fps}.mp4", count, fps)
    video = decode_video(path)
    assert list(video.plan.indices) == expected
    assert _read_indices(video.frames) == expected


def test_frame_settings_are_honoured(shared_videos):
    video = decode_video(shared_videos / "bikes.mp4", VideoSettings(fps=1.0, max_pixels=200_000))
    assert video.plan.num_frames == 10
    assert video.plan.height * video.plan.width <= 200_000


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "empty file"),
        ("text", "not a decodable video"),
        ("truncated_index", "not a decodable video"),
        ("truncated_data", "truncated"),
        ("zero_frames", "no video stream"),
        ("one_frame", "at least 2"),
    ],
)
def test_bad_videos_raise_clear_errors(tmp_path, kind, message):
    bad = make_bad_videos(tmp_path)
    with pytest.raises(VideoError, match=message) as info:
        decode_video(bad[kind])
    assert str(bad[kind]) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        decode_video(tmp_path / "absent.mp4")
    with pytest.raises(VideoError, match="is a directory"):
        decode_video(tmp_path)


def test_huge_resolution_is_refused_before_decoding_all_frames(tmp_path):
    path = encode_video(tmp_path / "wide.mp4", moving_pattern(4, 64, 2400))
    with pytest.raises(VideoError, match="exceeds the 2048-pixel side limit"):
        decode_video(path, VideoSettings(max_side=2048))
    video = decode_video(path)  # under the default limit it is scaled into the pixel budget
    assert video.frames.shape[1] * video.frames.shape[2] <= VideoSettings().max_pixels


def test_find_videos_expands_folders_and_keeps_named_files(tmp_path, shared_videos):
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "clip.MP4").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("not a video")
    named = tmp_path / "named.dat"
    named.write_text("x")
    found, problems = find_videos([shared_videos, tmp_path, named])
    names = [p.name for p in found]
    assert names[:4] == SHARED_VIDEO_NAMES
    assert "clip.MP4" in names and "named.dat" in names and "readme.txt" not in names
    assert problems == []


def test_decoding_first_then_torch_math_does_not_crash(shared_videos):
    """decord2 loads NVIDIA libraries globally; torch imported after it crashed on a CPU matmul."""
    import subprocess
    import sys

    code = ("from ml_backend.video.decoding import decode_video\n"
            f"decode_video({str(shared_videos / 'carphone_distorted.mp4')!r})\n"
            "import torch\n"
            "a = torch.randn(512, 512)\n"
            "print(float((a @ a).abs().sum()) > 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
