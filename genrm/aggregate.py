"""From pairwise judgements to one reward per response of a group (pure functions).

    pairs = comparison_pairs(n, "circular")          # which responses the judge compares
    judgements = [...one Judgement per pair...]      # from genrm.serving
    out = group_rewards(n, pairs, judgements, think_lengths, answer_lengths, RewardConfig())

The formulas are the recipe's: tie-break only on equal scores, base reward = mean of a response's
scores, centred length weights for reasoning and answer, and a conciseness bonus for the shortest
non-empty response among the best ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from genrm.judge import DEFAULT_RANKING, DEFAULT_SCORE, Judgement


@dataclass
class RewardConfig:
    plan: str = "circular"  # circular: n judge calls, each response judged twice (once per position) | all_pairs
    tie_break: bool = True  # equal scores: s_i += 3.5 - ranking, s_j += ranking - 3.5
    length_weight_reasoning: float = 0.5  # coefficient of the centred reasoning-length weight
    length_weight_answer: float = 0.5  # ...and of the answer-length weight (0 turns length control off)
    bonus_reasoning: float = 0.5  # conciseness bonus for the shortest non-empty reasoning...
    bonus_answer: float = 0.5  # ...and answer, among the responses whose base reward is in the top...
    bonus_top_fraction: float = 0.2  # ...fraction of the group (0 turns the bonus off)


def comparison_pairs(n: int, plan: str = "circular") -> list[tuple[int, int]]:
    """(first, second) response indices of each judge call.

    circular: (0,1), (1,2), ..., (n-1,0): n calls, every response in both positions once (n = 2 gives
    both orders of the one pair). all_pairs: every unordered pair once, the order alternating so
    each response is first about as often as second. A single response has no pair.
    """
    if plan == "circular":
        return [] if n < 2 else [(i, (i + 1) % n) for i in range(n)]
    if plan == "all_pairs":
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        return [(j, i) if k % 2 else (i, j) for k, (i, j) in enumerate(pairs)]
    raise ValueError(f"unknown comparison plan {plan!r} (circular or all_pairs)")


def pair_scores(j: Judgement, tie_break: bool = True) -> tuple[float, float]:
    """The two responses' scores from one judgement; equal scores are split by the ranking."""
    s1, s2 = j.score_1, j.score_2
    if tie_break and s1 == s2:
        s1, s2 = s1 + (DEFAULT_RANKING - j.ranking), s2 + (j.ranking - DEFAULT_RANKING)
    return s1, s2


def length_weights(lengths: list[int]) -> list[float]:
    """w_i = 1 - (l_i - l_min) / (l_max - l_min), centred to mean 0; all equal lengths give 0."""
    lo, hi = min(lengths, default=0), max(lengths, default=0)
    if hi == lo:
        return [0.0] * len(lengths)
    w = [1 - (x - lo) / (hi - lo) for x in lengths]
    mean = sum(w) / len(w)
    return [x - mean for x in w]


def concise_bonus(base: list[float], lengths: list[int], top_fraction: float) -> list[bool]:
    """Who gets the bonus: the shortest non-empty among those whose base reward is in the top
    `top_fraction` (at least one response; ties at the cut and on length all included)."""
    n = len(base)
    if n < 2 or top_fraction <= 0:
        return [False] * n
    cut = sorted(base, reverse=True)[max(1, math.ceil(top_fraction * n)) - 1]
    eligible = [i for i in range(n) if base[i] >= cut and lengths[i] > 0]
    if not eligible:
        return [False] * n
    shortest = min(lengths[i] for i in eligible)
    return [i in eligible and lengths[i] == shortest for i in range(n)]


def group_rewards(n: int, pairs: list[tuple[int, int]], judgements: list[Judgement], think_lengths: list[int],
                  answer_lengths: list[int], cfg: RewardConfig) -> dict[str, list[float]]:
    """Per response: `reward` (the training reward) and its parts `base`, `length`, `bonus`.

    A response no judgement covers (a group of one) gets the default score and no length terms.
    """
    if len(pairs) != len(judgements):
        raise ValueError(f"{len(pairs)} pairs but {len(judgements)} judgements")
    scores: list[list[float]] = [[] for _ in range(n)]
    for (i, k), j in zip(pairs, judgements):
        s_i, s_k = pair_scores(j, cfg.tie_break)
        scores[i].append(s_i)
        scores[k].append(s_k)
    base = [sum(s) / len(s) if s else DEFAULT_SCORE for s in scores]
    w_think, w_answer = length_weights(think_lengths), length_weights(answer_lengths)
    length = [cfg.length_weight_reasoning * a + cfg.length_weight_answer * b for a, b in zip(w_think, w_answer)]
    b_think = concise_bonus(base, think_lengths, cfg.bonus_top_fraction)
    b_answer = concise_bonus(base, answer_lengths, cfg.bonus_top_fraction)
    bonus = [cfg.bonus_reasoning * a + cfg.bonus_answer * b for a, b in zip(b_think, b_answer)]
    return {"reward": [b + l_ + c for b, l_, c in zip(base, length, bonus)], "base": base, "length": length,
            "bonus": bonus}
