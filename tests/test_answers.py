import pytest

from ml_backend.answers import allowed_answers, clamp_score, parse_score
from ml_backend.errors import AnswerParseError


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>3.25</answer>", 3.25),
        ("<answer> 2 </answer>", 2.0),
        ("<think>maybe 4.5</think><answer>1.75</answer>", 1.75),
        ("<answer>2.0</answer> then <answer>4.10</answer>", 4.1),  # last tag wins
        ("<answer>score: 3.5 out of 5</answer>", 3.5),  # first number in the tag
        ("The difficulty is 4.2", 4.2),  # no tag: whole text
        ("<answer>7.3</answer>", 5.0),  # clamped high
        ("<answer>0.25</answer>", 1.0),  # clamped low
        ("<answer>-3</answer>", 3.0),  # unsigned number, as in the reference
        ("<ANSWER>2.5</ANSWER>", 2.5),  # tags are case-sensitive, as in the reference: whole text
        ("<answer>.5</answer>", 5.0),  # the reference's number pattern needs a digit first
        ("<answer>2.</answer>", 2.0),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "<answer>hard</answer>", "no idea", "<answer></answer> nothing"])
def test_unparseable_answer_keeps_raw_text(text):
    with pytest.raises(AnswerParseError) as info:
        parse_score(text)
    assert info.value.raw_text == text


def test_unparseable_tag_does_not_fall_back_to_text_outside_it():
    with pytest.raises(AnswerParseError, match="last <answer> tag"):
        parse_score("I think 3 <answer>unsure</answer>")


def test_allowed_answers_are_the_models_own_formats():
    answers = allowed_answers()
    assert len(answers) == len(set(answers)) == 5 + 41 + 401
    assert {"<answer>2.0</answer>", "<answer>3</answer>", "<answer>4.25</answer>",
            "<answer>5.00</answer>"} <= set(answers)
    assert not {"<answer>5.5</answer>", "<answer>0.5</answer>", "<answer>6</answer>",
                "<answer>2.345</answer>"} & set(answers)
    scores = [parse_score(a) for a in answers]
    assert min(scores) == 1.0 and max(scores) == 5.0
    assert clamp_score(9) == 5.0
