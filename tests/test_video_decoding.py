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


def test_decoding_at_target_size_is_close_to_full_decode_then_resize(shared_videos):
    import decord
    from PIL import Image

    video = decode_video(shared_videos / "bigbuckbunny.mp4")
    full = decord.VideoReader(str(shared_videos / "bigbuckbunny.mp4")).get_batch(list(video.plan.indices)).asnumpy()
    reference = np.stack([
        np.asarray(Image.fromarray(f).resize((video.plan.width, video.plan.height), Image.BICUBIC)) for f in full
    ])
    difference = np.abs(video.frames.astype(np.int16) - reference.astype(np.int16)).mean()
    assert difference < 3.0, f"mean absolute difference {difference:.2f} of 255"


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
