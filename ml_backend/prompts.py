"""The exact prompts of the reference (SPEC section 2) and the chat messages built from them."""

from __future__ import annotations

from typing import Literal

TASK_PREFIX = "You are doing the video quality assessment task. Here is the question: "

DIFFICULTY_QUESTION = (
    "Assess how difficult it is to evaluate this video's quality for video quality assessment. "
    "The difficulty rating should be a float between 1 and 5, rounded to two decimal places, "
    "with 1 representing very easy to evaluate and 5 representing very difficult to evaluate."
)
ANSWER_ONLY_SUFFIX = " Please only output the final answer with only one score in <answer> </answer> tags."

QUALITY_QUESTION = (
    "What is your overall rating on the quality of this video? The rating should be a float "
    "between 1 and 5, rounded to two decimal places, with 1 representing very poor quality "
    "and 5 representing excellent quality."
)
THINKING_SUFFIX = (
    " First output the thinking process in <think> </think> tags and then output the final "
    "answer with only one score in <answer> </answer> tags."
)

Task = Literal["difficulty", "quality"]

PROMPTS: dict[str, str] = {
    "difficulty": TASK_PREFIX + DIFFICULTY_QUESTION + ANSWER_ONLY_SUFFIX,
    "quality": TASK_PREFIX + QUALITY_QUESTION + THINKING_SUFFIX,
}

# Bump when a prompt or the model input changes: it is part of every score-cache key.
# 2: no "Video 1: ", float32 frame indices, float pixel budget, torchvision resize,
#    second_per_grid_ts 1.0, answers in the model's own formats.
# 3: video tokens at their 3-D M-RoPE positions, as the reference and vLLM place them (transformers 5
#    computes them only from mm_token_type_ids, which we did not pass: videos had text positions).
# 4: the text after a video one past the video's largest position on any axis, as transformers 4.49
#    placed it (transformers 5 ignores the temporal axis there; ml_backend.model.positions).
PROMPT_VERSION = 4


def prompt_text(task: Task) -> str:
    try:
        return PROMPTS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(PROMPTS)}") from None


def video_messages(task: Task) -> list[dict]:
    """One user turn: the video first, then the question (the reference order)."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "video"},
                {"type": "text", "text": prompt_text(task)},
            ],
        }
    ]
