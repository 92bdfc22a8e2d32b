"""A scripted GRPO policy, so tests know every rollout's calls in advance: the model really generates each turn,
through the trainer's own (possibly distributed) generation path, then its tokens are replaced by the script's.

Zoomers call the tool every turn: twice the same box (one redundant pair, T = 2), then an empty box the spec
refuses, then a call with a wrong argument name that fails, then again, which the turn limit cuts. The others answer
at once.
"""

from __future__ import annotations

import json

from drim_train.grpo import ZoomGRPOTrainer

BOX = [100, 100, 600, 600]
ZOOMS = [{"bbox_2d": BOX}, {"bbox_2d": BOX}, {"bbox_2d": [500, 500, 500, 500]}, {"box": BOX}, {"bbox_2d": BOX}]
MAX_TURNS = len(ZOOMS) - 1
ANSWER = "<think>\nseen\n</think>\n\n<answer>A</answer>"
PENALTY = -1.0 / 2**2 * (1.0 - 0.5)  # λ = 1, ε = 0.5: T = 2 accepted boxes at IoU 1, the answer never given


def _call(arguments: dict) -> str:
    call = json.dumps({"name": "zoom_in", "arguments": arguments})
    return f"<think>\nlook\n</think>\n\n<tool_call>\n{call}\n</tool_call>"


class ScriptedTrainer(ZoomGRPOTrainer):
    """`zoomer(rank, i)` says whether the i-th rollout of a rank's first turn zooms; only zoomers reach later turns.
    `generations` counts the model's generate calls, replays included."""

    zoomer = staticmethod(lambda rank, i: i % 2 == 0)

    def _generate(self, prompts: list):
        self._turn = 0
        return super()._generate(prompts)

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        _, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        turn, self._turn = self._turn, self._turn + 1
        rank = self.accelerator.process_index
        texts = [_call(ZOOMS[turn]) if turn > 0 or self.zoomer(rank, i) else ANSWER for i in range(len(prompt_ids))]
        eos = self._tokenizer.eos_token
        return [self._tokenizer(t + eos, add_special_tokens=False)["input_ids"] for t in texts], logprobs


def count_generations(trainer) -> list[int]:
    """A one-element counter of the unwrapped model's generate calls."""
    count = [0]
    model = trainer.accelerator.unwrap_model(trainer.model)
    generate = model.generate

    def counted(*args, **kwargs):
        count[0] += 1
        return generate(*args, **kwargs)

    model.generate = counted
    return count
