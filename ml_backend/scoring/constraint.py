"""Constrained decoding to the answer formats the models write: ``<answer>`` 1-5 ``</answer>``.

Every allowed answer (no, one or two decimals: ``3``, ``3.0``, ``3.25``) is tokenized once
into a prefix tree; at each step the model may only continue along the tree, then must
stop. Greedy search along it is deterministic, needs at most a dozen steps, always yields
a parseable score, and equals the unconstrained greedy answer whenever that one is valid:
the constraint only removes tokens the model did not prefer.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..answers import allowed_answers


class AnswerTrie:
    def __init__(self, token_sequences: Sequence[Sequence[int]], end_ids: Sequence[int]) -> None:
        if not end_ids:
            raise ValueError("at least one end-of-answer token id is needed")
        self.root: dict[int, dict] = {}
        self.end_ids = list(end_ids)
        self.depth = 0
        for seq in token_sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(int(token), {})
            node[-1] = {}  # leaf marker: the answer is complete here
            self.depth = max(self.depth, len(seq))

    @classmethod
    def for_tokenizer(cls, tokenizer, end_ids: Sequence[int]) -> AnswerTrie:
        answers = allowed_answers()
        encoded = tokenizer(answers, add_special_tokens=False)["input_ids"]
        return cls(encoded, end_ids)

    @property
    def max_new_tokens(self) -> int:
        return self.depth + 1  # answer tokens + one end token

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Token ids allowed after ``generated`` (the tokens produced so far)."""
        node = self.root
        for token in generated:
            if token in self.end_ids and -1 in node:
                return self.end_ids  # finished; generation pads after the end token
            child = node.get(int(token))
            if child is None:
                return self.end_ids  # cannot happen under the constraint; end rather than wander
            node = child
        choices = [t for t in node if t != -1]
        if -1 in node:
            choices.extend(self.end_ids)
        return choices

    def prefix_function(self, prompt_length: int):
        """Callback for ``generate(prefix_allowed_tokens_fn=...)`` with left-padded prompts."""

        def allowed_tokens(_batch_id: int, input_ids) -> list[int]:
            return self.allowed(input_ids[prompt_length:].tolist())

        return allowed_tokens
