"""The two GRPO environments of the GenRM recipe (registered when the RL stages list `genrm.envs`
in `grpo.env_modules`):

  genrm:          RLHF. Scores whole groups: the judge compares the policy's responses to one prompt
                  pairwise (genrm.aggregate), every comparison of the step in one batch.
  pairwise_judge: judge training. The policy is the judge; its verdict on a preference pair is
                  rewarded by closeness to the gold scores and ranking.
"""
from __future__ import annotations

import math
from collections import Counter

from chat_template.parse import parse_response
from genrm.aggregate import RewardConfig, comparison_pairs, group_rewards
from genrm.judge import DEFAULT, DEFAULT_RANKING, Judgement, judge_messages, judge_training_reward, parse_judgement
from genrm.serving import judge_all
from grpo.envs import Environment, Score, register


@register
class GenRMEnv(Environment):
    name = "genrm"
    group_scoring = True
    timeout_s = 3600.0  # a whole step of judge calls; the clients bound each request themselves

    def __init__(self, judge=None, reward: RewardConfig | dict | None = None, max_retries: int = 3):
        self.judge, self.max_retries = judge, max_retries
        self.cfg = reward if isinstance(reward, RewardConfig) else RewardConfig(**(reward or {}))
        comparison_pairs(3, self.cfg.plan)  # an unknown plan fails at construction

    def score(self, task: dict, response: str) -> Score:
        return self.score_groups([(task, [response])])[0][0]

    def score_groups(self, groups: list[tuple[dict, list[str]]]) -> list[list[Score]]:
        """All comparisons of all groups go to the judge in one batch. A group of one with a
        `reference` answer in its task (validation) is judged against it, in both positions."""
        if self.judge is None:
            raise RuntimeError("the genrm environment has no judge (the RLHF stage provides one)")
        plans, chats = [], []
        for task, responses in groups:
            parsed = [parse_response(r, thinking=task.get("enable_thinking", True)) for r in responses]
            answers = [p.content.strip() for p in parsed]
            against_ref = len(responses) == 1 and task.get("reference") is not None
            if against_ref:
                answers.append(parse_response(task["reference"], thinking=False).content.strip())
            pairs = comparison_pairs(len(answers), self.cfg.plan)
            chats += [judge_messages(task["messages"], answers[i], answers[k]) for i, k in pairs]
            plans.append((parsed, answers, pairs, against_ref))
        verdicts, stats = judge_all(self.judge, chats, self.max_retries)
        out, at = [], 0
        for parsed, answers, pairs, against_ref in plans:
            mine, at = verdicts[at: at + len(pairs)], at + len(pairs)
            out.append(self._group_scores(parsed, answers, pairs, mine, against_ref))
        return out

    def _group_scores(self, parsed, answers, pairs, verdicts, against_ref) -> list[Score]:
        think = [len(p.reasoning or "") for p in parsed] + ([0] if against_ref else [])
        ans = [len(a) for a in answers]
        if against_ref:  # validation: the judge's score of the response, no length terms
            base = group_rewards(2, pairs, verdicts, think, ans, self.cfg)["base"][:1]
            rewards = {"reward": base, "base": base}
        else:
            rewards = group_rewards(len(answers), pairs, verdicts, think, ans, self.cfg)
        scores = []
        for i in range(len(parsed)):
            mine = [(k == 0, v) for (a, b), v in zip(pairs, verdicts) for k, x in enumerate((a, b)) if x == i]
            first = [v.score_1 for is_first, v in mine if is_first]
            second = [v.score_2 for is_first, v in mine if not is_first]
            info = {"score": rewards["base"][i], "reasoning_chars": think[i], "answer_chars": ans[i],
                    "parse_failure": sum(not v.parsed for _, v in mine) / max(len(mine), 1)}
            if first and second:  # the response's score in position 1 minus in position 2
                info["position_bias"] = sum(first) / len(first) - sum(second) / len(second)
            buckets = Counter(ranking_bucket(v.ranking) for _, v in mine)
            for k in (*range(1, 7), "tie"):
                info[f"ranking_{k}"] = buckets[k] / max(len(mine), 1)
            scores.append(Score(rewards["reward"][i], f"judged {rewards['base'][i]:.2f}", info))
        return scores


def ranking_bucket(ranking: float) -> int | str:
    """The ranking value a verdict counts under in the `ranking_<k>` distribution: "tie" for 3.5
    (no preference), else the nearest of 1..6 (halves away from the middle)."""
    if ranking == DEFAULT_RANKING:
        return "tie"
    nearest = math.floor(ranking + 0.5) if ranking > DEFAULT_RANKING else math.ceil(ranking - 0.5)
    return min(6, max(1, nearest))


def preferred_side(verdict: Judgement | None) -> float:
    """1.0: the verdict prefers response 1; 0.0: response 2; 0.5: neither (a tie, or no verdict).
    Its mean over a balanced set is the judge's position bias (0.5: none)."""
    if verdict is None or verdict.ranking == DEFAULT_RANKING:
        return 0.5
    return float(verdict.ranking < DEFAULT_RANKING)


def position_consistency(tasks: list[dict], scores: list[Score]) -> dict:
    """Share of preference pairs, judged in both orders (task ids `X` and `X-swapped`, as
    genrm.data.judge_tasks makes them), whose two parsed verdicts agree: the same response
    preferred, or a tie both times."""
    side = {t["id"]: (s.info.get("format_ok", 0.0), s.info.get("first_preferred", 0.5))
            for t, s in zip(tasks, scores) if t["env"] == "pairwise_judge"}
    pairs = [(side[i], side[i + "-swapped"]) for i in side if i + "-swapped" in side]
    if not pairs:
        return {}
    consistent = sum(ok_a and ok_b and a + b == 1.0 for (ok_a, a), (ok_b, b) in pairs)
    return {"pairwise_judge/position_consistent": consistent / len(pairs)}


@register
class PairwiseJudgeEnv(Environment):
    """Reward of a judge's verdict: R = -C1*I_format - |P_s1-G_s1| - |P_s2-G_s2| - C2*|P_rank-G_rank|
    (C1 = `format_penalty`, C2 = `ranking_weight`). Task fields: score_1, score_2, ranking (gold)."""

    name = "pairwise_judge"

    def __init__(self, format_penalty: float = 10.0, ranking_weight: float = 1.0):
        self.format_penalty, self.ranking_weight = format_penalty, ranking_weight

    def score(self, task: dict, response: str) -> Score:
        gold = Judgement(float(task["score_1"]), float(task["score_2"]), float(task["ranking"]))
        pred = parse_judgement(response, thinking=task.get("enable_thinking", True))
        reward = judge_training_reward(pred, gold, self.format_penalty, self.ranking_weight)
        p = pred or DEFAULT  # unparseable: measured as the defaults it is replaced by
        info = {"format_ok": float(pred is not None),
                "preferred_right": float(pred is not None and preferred_side(p) == preferred_side(gold)),
                "first_preferred": preferred_side(pred),
                "score_error": (abs(p.score_1 - gold.score_1) + abs(p.score_2 - gold.score_2)) / 2,
                "ranking_error": abs(p.ranking - gold.ranking)}
        if pred is None:
            return Score(reward, "unparseable verdict", info)
        return Score(reward, f"verdict {p.score_1:g}/{p.score_2:g}/{p.ranking:g} vs gold "
                             f"{gold.score_1:g}/{gold.score_2:g}/{gold.ranking:g}", info)
