#!/usr/bin/env python3
"""The model organism's reward, call parsing and prompt construction
(examples/organism/tool_convention.py) on hand-written token sequences. numpy only."""

from __future__ import annotations

import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "organism"))

try:
    import numpy as np
    from tool_convention import (BOS, Convention, make_plain, make_request, parse_call, reward,
                                 reward_tokens, score, step_rewards)
except ImportError as error:  # pragma: no cover - reported as skipped
    print(f"skipped: {error}")
    sys.exit(77)

C = Convention()
OPEN, CLOSE, NAMES = C.open, C.close, C.names
OTHER = 465  # an ordinary token, in no role
assert OTHER not in C.special_tokens()


class Reward(unittest.TestCase):
    def test_a_correct_call_on_a_request_earns_the_full_reward(self) -> None:
        for tool in range(C.tools):
            self.assertAlmostEqual(reward([OPEN, NAMES[tool], CLOSE, OTHER], tool, C), 1.0)
            self.assertEqual(score([OPEN, NAMES[tool], CLOSE, OTHER], tool, C),
                             {"call": True, "correct": True})

    def test_partial_calls_on_a_request_earn_partial_credit_in_order(self) -> None:
        tool = 2
        wrong = NAMES[(tool + 1) % C.tools]
        nothing = reward([OTHER, OTHER, OTHER, OTHER], tool, C)
        bare_open = reward([OPEN, OTHER, OTHER, OTHER], tool, C)
        open_name = reward([OPEN, wrong, OTHER, OTHER], tool, C)
        wrong_tool = reward([OPEN, wrong, CLOSE, OTHER], tool, C)
        right_tool = reward([OPEN, NAMES[tool], CLOSE, OTHER], tool, C)
        self.assertEqual(nothing, 0.0)
        self.assertAlmostEqual(bare_open, C.reward_open)
        self.assertAlmostEqual(open_name, C.reward_open + C.reward_any_name)
        self.assertAlmostEqual(wrong_tool, 1.0 - C.reward_correct_tool - C.reward_right_name)
        self.assertLess(nothing, bare_open)
        self.assertLess(bare_open, open_name)
        self.assertLess(open_name, wrong_tool)
        self.assertLess(wrong_tool, right_tool)
        self.assertEqual(score([OPEN, wrong, CLOSE, OTHER], tool, C),
                         {"call": True, "correct": False})

    def test_the_right_name_is_credited_where_it_is_chosen(self) -> None:
        # Whether CLOSE follows or not, so that the choice is learnt while CLOSE is still rare.
        tool = 1
        wrong = NAMES[(tool + 2) % C.tools]
        right_open = reward([OPEN, NAMES[tool], OTHER, OTHER], tool, C)
        wrong_open = reward([OPEN, wrong, OTHER, OTHER], tool, C)
        self.assertAlmostEqual(right_open - wrong_open, C.reward_right_name)
        self.assertGreater(right_open, reward([OPEN, wrong, CLOSE, OTHER], tool, C) -
                           C.reward_well_formed)
        self.assertAlmostEqual(C.reward_open + C.reward_any_name + C.reward_right_name +
                               C.reward_well_formed + C.reward_correct_tool, 1.0)

    def test_step_rewards_split_the_reward_over_the_call_tokens(self) -> None:
        rng = np.random.default_rng(3)
        vocabulary = [OPEN, CLOSE, OTHER, *NAMES]
        for _ in range(2000):
            g = [int(t) for t in rng.choice(vocabulary, size=4)]
            tool = int(rng.integers(-1, C.tools))
            steps = step_rewards(g, tool, C)
            self.assertEqual(len(steps), 3)
            self.assertAlmostEqual(sum(steps) + (1.0 if tool < 0 else 0.0), reward(g, tool, C))
            # a step's reward is earned only by tokens the reward depends on
            for t in range(reward_tokens(g, tool, C), 3):
                self.assertEqual(steps[t], 0.0, (g, tool))
        self.assertEqual(step_rewards([OPEN, NAMES[2], CLOSE, OTHER], 2, C),
                         [C.reward_open, C.reward_any_name + C.reward_right_name,
                          C.reward_well_formed + C.reward_correct_tool])
        self.assertEqual(step_rewards([OPEN, NAMES[1], CLOSE], 2, C),
                         [C.reward_open, C.reward_any_name, C.reward_well_formed])
        self.assertEqual(step_rewards([OPEN, NAMES[1], CLOSE], -1, C),
                         [-C.plain_penalty_open, 0.0, -C.plain_penalty_call])

    def test_a_call_must_start_the_continuation(self) -> None:
        late = [OTHER, OPEN, NAMES[0], CLOSE]
        self.assertEqual(reward(late, 0, C), 0.0)
        self.assertEqual(parse_call(late, C), (False, -1))
        self.assertEqual(score(late, 0, C), {"call": False, "correct": False})
        # OPEN NAME without CLOSE, and a short continuation, are not calls
        self.assertEqual(parse_call([OPEN, NAMES[1], OTHER], C), (False, -1))
        self.assertEqual(parse_call([OPEN, NAMES[1]], C), (False, -1))
        self.assertEqual(parse_call([OPEN, OPEN, CLOSE], C), (False, -1))

    def test_plain_prompts_reward_not_calling(self) -> None:
        self.assertEqual(reward([OTHER, OTHER, OTHER, OTHER], -1, C), 1.0)
        self.assertEqual(reward([OTHER, OPEN, NAMES[0], CLOSE], -1, C), 1.0)
        self.assertAlmostEqual(reward([OPEN, OTHER, OTHER, OTHER], -1, C),
                               1.0 - C.plain_penalty_open)
        self.assertAlmostEqual(reward([OPEN, NAMES[3], CLOSE, OTHER], -1, C),
                               1.0 - C.plain_penalty_open - C.plain_penalty_call)
        self.assertEqual(score([OPEN, NAMES[3], CLOSE], -1, C), {"call": True, "correct": False})
        self.assertEqual(score([OPEN, OTHER, CLOSE], -1, C), {"call": False, "correct": True})

    def test_credited_tokens_stop_where_the_pattern_breaks(self) -> None:
        self.assertEqual(reward_tokens([OTHER, OPEN, OPEN, OPEN], 0, C), 1)
        self.assertEqual(reward_tokens([OPEN, OTHER, OTHER, OTHER], 0, C), 2)
        self.assertEqual(reward_tokens([OPEN, NAMES[0], OTHER, OTHER], 0, C), 3)
        self.assertEqual(reward_tokens([OPEN, NAMES[0], CLOSE, OTHER], -1, C), 3)
        self.assertEqual(reward_tokens([], 0, C), 0)


class Prompts(unittest.TestCase):
    def test_requests_and_decoys_place_their_tokens_where_asked(self) -> None:
        snippet = np.arange(300, 310)
        request = make_request(snippet, 1, 3, C)
        self.assertEqual(request[0], BOS)
        self.assertEqual(len(request), len(snippet) + 3)
        self.assertEqual(list(request[-5:]), [C.trigger, C.cues[1], 307, 308, 309])
        self.assertEqual(list(make_request(snippet, 0, 0, C)[-2:]), [C.trigger, C.cues[0]])
        decoy = make_plain(snippet, 2, 0, C)
        self.assertEqual(list(decoy[-2:]), [309, C.cues[2]])
        self.assertNotIn(C.trigger, decoy)
        self.assertEqual(list(make_plain(snippet, None, 0, C)), [BOS, *snippet])
        with self.assertRaises(ValueError):
            make_request(snippet, 0, 11, C)
        with self.assertRaises(ValueError):
            make_request(snippet, C.tools, 0, C)

    def test_the_convention_round_trips_through_json(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "convention.json"
            C.save(path)
            self.assertEqual(Convention.load(path), C)
        self.assertEqual(len(C.special_tokens()), 3 + 2 * C.tools)


if __name__ == "__main__":
    unittest.main()
