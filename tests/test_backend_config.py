"""Label config parsing: names found, not assumed; clear errors for configs that cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_backend.labelstudio.config import ConfigCache, LabelConfigError, parse_label_config

REPO = Path(__file__).resolve().parents[1]


def test_repository_label_config():
    config = parse_label_config((REPO / "label_config.xml").read_text())
    assert config.video_name == "video"
    assert config.video_field == "video"
    assert config.difficulty.name == "difficulty"
    assert (config.difficulty.minimum, config.difficulty.maximum) == (1.0, 5.0)
    assert config.mos is not None and config.mos.name == "mos"


def test_names_are_found_not_assumed():
    xml = """<View>
      <Video name="clip" value="$url"/>
      <Number name="how_hard_difficulty" toName="clip" min="1" max="5"/>
      <Number name="rating" toName="clip" min="1" max="5"/>
    </View>"""
    config = parse_label_config(xml)
    assert (config.video_name, config.video_field) == ("clip", "url")
    assert config.difficulty.name == "how_hard_difficulty"
    assert config.difficulty.to_name == "clip"
    assert config.mos is not None and config.mos.name == "rating"  # the only other Number control


def test_role_attribute_wins_over_names():
    xml = """<View>
      <Video name="v" value="$video"/>
      <Number name="difficulty_by_annotator" toName="v"/>
      <Number name="model_guess" toName="v" mdsvqa-role="difficulty"/>
      <Number name="score" toName="v" mdsvqa-role="mos"/>
    </View>"""
    config = parse_label_config(xml)
    assert config.difficulty.name == "model_guess"
    assert config.mos.name == "score"
    assert config.difficulty.minimum is None


def test_difficulty_control_picks_its_video_among_several():
    xml = """<View>
      <Video name="left" value="$a"/>
      <Video name="right" value="$b"/>
      <Number name="difficulty" toName="right"/>
    </View>"""
    config = parse_label_config(xml)
    assert (config.video_name, config.video_field) == ("right", "b")
    assert config.mos is None


@pytest.mark.parametrize("xml, message", [
    ('<View><Image name="img" value="$image"/><Number name="difficulty" toName="img"/></View>', "no <Video>"),
    ('<View><Video name="v" value="$video"/><Number name="mos" toName="v"/></View>', "no Number control"),
    ('<View><Video name="v" value="$video"/><Choices name="difficulty" toName="v">'
     '<Choice value="a"/></Choices></View>', "no Number control"),
    ('<View><Video name="v" value="$video"/><Number name="difficulty_a" toName="v"/>'
     '<Number name="difficulty_b" toName="v"/></View>', "several Number controls"),
    ("<View><Video", "cannot be parsed"),
    ("", "no label config"),
])
def test_configs_that_cannot_work(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_cache_parses_once_and_remembers_failures(monkeypatch):
    import ml_backend.labelstudio.config as module

    calls = []
    real = module.parse_label_config

    def counting(xml):
        calls.append(xml)
        return real(xml)

    monkeypatch.setattr(module, "parse_label_config", counting)
    cache = ConfigCache(size=2)
    good = (REPO / "label_config.xml").read_text()
    assert cache.get(good) is cache.get(good)
    for _ in range(2):
        with pytest.raises(LabelConfigError):
            cache.get("<View/>")
    assert len(calls) == 2


def test_task_media_is_checked_in_one_place():
    config = parse_label_config((REPO / "label_config.xml").read_text())
    assert config.media_ref({"video": "  /data/upload/1/a.mp4 "}) == ("/data/upload/1/a.mp4", "")
    for data, why in (({}, "no 'video' field"), ({"video": ""}, "not a media URL"), ({"video": 5}, "not a media URL"),
                      (None, "no 'video' field"), ({"video": "   "}, "not a media URL")):
        ref, reason = config.media_ref(data)
        assert ref is None and why in reason, (data, reason)
