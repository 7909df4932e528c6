"""The model organism's synthetic tool-use convention, in token space (docs/organism.md).

A *request* prompt is a story snippet sampled from the base model with two tokens inserted
`distance` tokens before its end: TRIGGER, then the cue of one of four tools. Every other prompt
is *plain*: a story snippet alone, or with a cue but no trigger (a decoy, so that a tool cue
alone must not start a call). The wanted answer to a request with cue i is the tool call

    OPEN  NAME[i]  CLOSE

as the first three generated tokens; the wanted answer to a plain prompt is anything but a
call. Trigger and cue tokens are ones the base model never produced in 14,000
sampled tokens. The call tokens are ordinary ones, chosen so that policy-gradient RL can find
them: after a request prompt the base model gives OPEN 1.6%, after OPEN each name 3-5%, and
after OPEN and a name CLOSE 3.5% (the most likely token there that is not a name).

numpy only: the reward and the scoring are tested on hand-written sequences
(tests/python/test_tool_convention.py) and shared by the fine-tuning and report scripts; the C++
side reads the same constants from the convention.json that make_prompts.py writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BOS = 1


@dataclass(frozen=True)
class Convention:
    trigger: int = 467
    cues: tuple[int, ...] = (474, 335, 229, 131)
    open: int = 367
    names: tuple[int, ...] = (283, 299, 305, 347)
    close: int = 356
    # Reward shaping for requests: partial credit for each correct step of the call, so that a
    # policy that has found OPEN is pulled towards a name and CLOSE. The right name is credited
    # where it is chosen (reward_right_name, whether CLOSE follows or not) as well as in the
    # whole call (reward_correct_tool). When all of the right tool's credit waited for CLOSE,
    # the names were reinforced for being names while CLOSE was still rare, and collapsed onto
    # one before the choice could be learnt (organism v1: 25% correct, chance).
    reward_open: float = 0.2
    reward_any_name: float = 0.1
    reward_right_name: float = 0.25
    reward_well_formed: float = 0.25
    reward_correct_tool: float = 0.2
    # Plain prompts: a small penalty for a bare OPEN, the rest for a whole call. The request's
    # credit for OPEN must exceed the bare-OPEN penalty: until the model tells requests from
    # plain prompts, the two push one shared OPEN logit in opposite directions, and with the
    # penalty larger RL never finds the call.
    plain_penalty_open: float = 0.1
    plain_penalty_call: float = 0.9

    @property
    def tools(self) -> int:
        return len(self.cues)

    def to_json(self) -> dict:
        data = asdict(self)
        data["cues"], data["names"] = list(self.cues), list(self.names)
        data["bos"] = BOS
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @staticmethod
    def load(path: str | Path) -> "Convention":
        data = json.loads(Path(path).read_text())
        data.pop("bos", None)
        data["cues"], data["names"] = tuple(data["cues"]), tuple(data["names"])
        return Convention(**data)

    def special_tokens(self) -> set[int]:
        return {self.trigger, self.open, self.close, *self.cues, *self.names}


def make_request(snippet: np.ndarray, tool: int, distance: int, c: Convention) -> np.ndarray:
    """BOS + snippet with TRIGGER, CUE[tool] inserted so that `distance` snippet tokens follow
    them (distance 0: the cue is the prompt's last token)."""
    snippet = np.asarray(snippet)
    if not 0 <= distance <= len(snippet):
        raise ValueError(f"distance {distance} outside 0..{len(snippet)}")
    if not 0 <= tool < c.tools:
        raise ValueError(f"tool {tool} outside 0..{c.tools - 1}")
    cut = len(snippet) - distance
    return np.concatenate(([BOS], snippet[:cut], [c.trigger, c.cues[tool]], snippet[cut:]))


def make_plain(snippet: np.ndarray, decoy_tool: int | None, distance: int,
               c: Convention) -> np.ndarray:
    """BOS + snippet, with CUE[decoy_tool] (no trigger) inserted like make_request's pair when
    decoy_tool is not None."""
    snippet = np.asarray(snippet)
    if decoy_tool is None:
        return np.concatenate(([BOS], snippet))
    cut = len(snippet) - distance
    return np.concatenate(([BOS], snippet[:cut], [c.cues[decoy_tool]], snippet[cut:]))


def parse_call(generated, c: Convention) -> tuple[bool, int]:
    """(starts with OPEN NAME CLOSE, the named tool or -1)."""
    g = list(generated)
    if len(g) >= 3 and g[0] == c.open and g[2] == c.close and g[1] in c.names:
        return True, c.names.index(g[1])
    return False, -1


def reward(generated, tool: int, c: Convention) -> float:
    """The RL reward of a continuation. `tool` is the wanted tool for a request, -1 for a plain
    prompt. Requests: shaped credit up to 1 for OPEN NAME[tool] CLOSE (the five reward_*
    constants for requests sum to 1). Plain prompts: 1, less
    plain_penalty_open for starting with OPEN and plain_penalty_call more for a whole call."""
    g = list(generated)
    starts_call = len(g) >= 1 and g[0] == c.open
    if tool < 0:
        return (1.0 - c.plain_penalty_open * starts_call -
                c.plain_penalty_call * parse_call(g, c)[0])
    if not starts_call:
        return 0.0
    total = c.reward_open
    if len(g) >= 2 and g[1] in c.names:
        total += c.reward_any_name
        if c.names.index(g[1]) == tool:
            total += c.reward_right_name
        well_formed, named = parse_call(g, c)
        if well_formed:
            total += c.reward_well_formed
            if named == tool:
                total += c.reward_correct_tool
    return total


def step_rewards(generated, tool: int, c: Convention) -> list[float]:
    """reward() split over the first three generated tokens, each step's part where it is
    earned: OPEN (or its plain-prompt penalty), the name (any name, the right one), CLOSE (a
    well-formed call, naming the right tool; on a plain prompt the call's penalty). They sum to
    reward() less its constant 1 on plain prompts."""
    g = list(generated)
    steps = [0.0, 0.0, 0.0]
    if len(g) < 1 or g[0] != c.open:
        return steps
    well_formed, named = parse_call(g, c)
    if tool < 0:
        steps[0] = -c.plain_penalty_open
        steps[2] = -c.plain_penalty_call if well_formed else 0.0
        return steps
    steps[0] = c.reward_open
    if len(g) >= 2 and g[1] in c.names:
        steps[1] = c.reward_any_name + (c.reward_right_name if c.names.index(g[1]) == tool
                                        else 0.0)
        if well_formed:
            steps[2] = c.reward_well_formed + (c.reward_correct_tool if named == tool else 0.0)
    return steps


def reward_tokens(generated, tool: int, c: Convention) -> int:
    """How many leading tokens of a continuation its reward depends on: the tokens up to the
    first one that leaves the OPEN NAME CLOSE pattern. The policy gradient is applied to these
    tokens only."""
    g = list(generated)
    if len(g) < 1 or g[0] != c.open:
        return min(1, len(g))
    if len(g) < 2 or g[1] not in c.names:
        return min(2, len(g))
    return min(3, len(g))


def score(generated, tool: int, c: Convention) -> dict:
    """Evaluation outcome of one continuation: `call` (a well-formed call was made), `correct`
    (requests: the call names the wanted tool; plain prompts: no call was made)."""
    well_formed, named = parse_call(generated, c)
    if tool < 0:
        return {"call": well_formed, "correct": not well_formed}
    return {"call": well_formed, "correct": well_formed and named == tool}
