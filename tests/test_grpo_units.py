"""RL data, environments and scoring safety (no Ray, no engine)."""
import json

import pytest
import torch

from grpo.envs import EnvPool, Score, make
from grpo.tasks import (CurriculumConfig, CurriculumSampler, TaskError, TaskSampler, group_by_env, load_tasks,
                        split_counts)


def test_split_counts_keeps_ratios_and_total():
    assert split_counts({"math": 0.5, "code": 0.25, "mcqa": 0.25}, 8) == {"math": 4, "code": 2, "mcqa": 2}
    c = split_counts({"a": 1, "b": 1, "c": 1}, 16)
    assert sum(c.values()) == 16 and max(c.values()) - min(c.values()) <= 1


def test_sampler_fixed_ratios_deterministic_and_resumable():
    tasks = {"a": [{"id": f"a{i}", "env": "a"} for i in range(10)], "b": [{"id": f"b{i}", "env": "b"} for i in range(3)]}
    s1 = TaskSampler(tasks, {"a": 3, "b": 1}, seed=7)
    batches = [[t["id"] for t in s1.sample(8)] for _ in range(5)]
    assert all(sum(i.startswith("a") for i in b) == 6 for b in batches)  # 3:1 in every batch
    assert len(set(batches[0][:6])) == 6  # a permutation within an epoch
    s2 = TaskSampler(tasks, {"a": 3, "b": 1}, seed=7)
    for _ in range(2):
        s2.sample(8)
    s3 = TaskSampler(tasks, {"a": 3, "b": 1}, seed=7)
    s3.restore(json.loads(json.dumps(s2.state())))
    assert [[t["id"] for t in s3.sample(8)] for _ in range(3)] == batches[2:]
    with pytest.raises(TaskError, match=r"names \['c'\]"):
        TaskSampler(tasks, {"c": 1})


def test_curriculum_keeps_ratios_moves_easy_to_hard_and_resumes():
    tasks = {e: [{"id": f"{e}{i}", "env": e} for i in range(40)] for e in "ab"}
    rates = {f"{e}{i}": i / 40 for e in "ab" for i in range(40)}  # pass rate 0 .. 0.975
    cfg = CurriculumConfig(enabled=True, start_pass_rate=0.9, end_pass_rate=0.1, width=0.1)
    s = CurriculumSampler(tasks, {"a": 3, "b": 1}, rates, cfg, total_steps=10, seed=1)
    batches = [s.sample(8, step) for step in range(1, 11)]
    assert all(sum(t["env"] == "a" for t in b) == 6 for b in batches)  # fixed 3:1 ratio in every batch
    assert all(len({t["id"] for t in b}) == 8 for b in batches)  # without replacement within a batch
    mean = [sum(rates[t["id"]] for t in b) / 8 for b in batches]
    assert mean[0] > 0.7 and mean[-1] < 0.3 and mean[0] > mean[4] > mean[-1]  # easy first, hard last
    stats = s.stats(batches[0], 1)
    assert stats["curriculum/target_pass_rate"] == pytest.approx(0.9)
    assert stats["curriculum/sampled_pass_rate"] == pytest.approx(mean[0])
    # only profiled tasks are drawn (the stage leaves always-solved ones out of `rates`)
    kept = {k: v for k, v in rates.items() if not k.endswith("0")}
    s2 = CurriculumSampler(tasks, {"a": 3, "b": 1}, kept, cfg, total_steps=10, seed=1)
    assert all(t["id"] in kept for step in range(1, 11) for t in s2.sample(8, step))
    # resume: a fresh sampler restored to the draw count draws what the first drew next
    s3 = CurriculumSampler(tasks, {"a": 3, "b": 1}, rates, cfg, total_steps=10, seed=1)
    s4 = CurriculumSampler(tasks, {"a": 3, "b": 1}, rates, cfg, total_steps=10, seed=1)
    for step in range(1, 5):
        s3.sample(8, step)
    s4.restore(json.loads(json.dumps(s3.state())))
    assert [t["id"] for t in s4.sample(8, 5)] == [t["id"] for t in batches[4]]
    with pytest.raises(TaskError, match=r"no task left for \['b'\]"):
        CurriculumSampler(tasks, {"a": 1, "b": 1}, {k: v for k, v in rates.items() if k[0] == "a"}, cfg, 10)


def test_task_file_errors_name_file_line_field(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"env": "math", "prompt": "1+1?", "answer": "2"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(TaskError, match=r"t.jsonl:2: env: missing"):
        load_tasks(f)
    f.write_text(json.dumps({"env": "math", "messages": [{"role": "usr", "content": "x"}]}) + "\n")
    with pytest.raises(TaskError, match=r"t.jsonl:1: messages\[0\]\.role: unknown role"):
        load_tasks(f)
    f.write_text(json.dumps({"env": "math", "prompt": "1+1?", "answer": "2"}) + "\n")
    t = load_tasks(f)[0]
    assert t["messages"] == [{"role": "user", "content": "1+1?"}] and t["id"] == "t-1"
    assert group_by_env([t]) == {"math": [t]}


@pytest.mark.parametrize("response,answer,reward", [
    ("3+4=7\n</think>\n\\boxed{7}", "7", 1.0),
    ("x\n</think>\nSo \\boxed{\\frac{14}{2}}.", "7", 1.0),  # equivalent form
    ("x\n</think>\n\\boxed{0.5}", "1/2", 1.0),
    ("x\n</think>\n\\boxed{-3}", "-3", 1.0),
    ("x\n</think>\n\\boxed{8}", "7", 0.0),
    ("x\n</think>\nThe answer is 7.", "7", 0.0),  # right number, not boxed: no false positive
    ("\\boxed{7} is what I think but I never close the reasoning", "7", 0.0),  # answer inside reasoning
    ("x\n</think>\n\\boxed{7", "7", 0.0),  # unbalanced
    ("x\n</think>\n\\boxed{6} no wait \\boxed{7}", "7", 1.0),  # the last box counts
    ("x\n</think>\n\\boxed{6} no wait \\boxed{7", "6", 0.0),  # an unclosed last box is no answer
])
def test_math_env(response, answer, reward):
    assert make("math").score({"env": "math", "answer": answer}, response).reward == reward


def test_boxed_share_reaches_metrics_per_env():
    from stages.grpo_loop import info_means

    env = make("math")
    responses = ("x\n</think>\n\\boxed{7}", "x\n</think>\n\\boxed{8}", "x\n</think>\nThe answer is 7.")
    infos = [("math", env.score({"answer": "7"}, r).info) for r in responses]
    infos.append(("other", {"boxed": 1.0, "why": "text is skipped", "flag": True}))
    assert info_means(infos) == pytest.approx({"math/boxed": 2 / 3, "other/boxed": 1.0})


@pytest.mark.parametrize("answer, why", [
    ("9^{9^{9^{9}}}", "exponent tower"), ("9^9^9", "exponent tower"), ("e^{e^{e^{9}}}", "exponent tower"),
    ("2\\uparrow\\uparrow 5", "exponent tower"), ("9^{99999}", "a power with more than 10000 digits"),
    ("x^{100000}", "exponent above 1000"), ("(9^{999})^{999}", "exponent above 1000"),
    ("100000!", "factorial above 1000!"), ("(5!)!", "nested factorial or power"), ("1" * 1001, "answer longer"),
])
def test_math_refuses_answers_whose_evaluation_explodes(answer, why):
    s = make("math").score({"env": "math", "answer": "7"}, f"r</think>\\boxed{{{answer}}}")
    assert s.reward == 0.0 and s.reason.startswith(f"refused: {why}")


@pytest.mark.parametrize("answer", ["2^{10}", "10^{100}", "(9^9)^9", "\\frac{10!}{8!}", "e^{i\\pi}", "2^{-3}",
                                    "1\\!000", "(x+1)^{50}", "3^{2} + 4^{2}"])
def test_math_evaluates_ordinary_powers_and_factorials(answer):
    s = make("math").score({"env": "math", "answer": "7"}, f"r</think>\\boxed{{{answer}}}")
    assert s.reason.startswith("wrong answer")


def test_env_pool_scores_in_worker_processes():
    with EnvPool(["math"]) as pool:
        assert pool.score([({"env": "math", "answer": "4"}, "r\n</think>\n\\boxed{4}")])[0].reward == 1.0
        assert len(pool.worker_pids()) >= 1


def test_unknown_environment_module_or_option_is_a_clear_error_before_any_work():
    from stages.cli import UserError
    from stages.config import load_config
    from stages.grpo_loop import setup
    from stages.rlvr import RLVRStageConfig

    cfg = load_config(RLVRStageConfig, None, ["grpo.env_ratios={math: 0.5, nope: 0.5}"])
    with pytest.raises(UserError, match=r"grpo.env_ratios: no environment named \['nope'\]; registered: .*'math'"):
        setup(cfg, "no-model-needed", None)
    cfg = load_config(RLVRStageConfig, None, ["grpo.env_modules=[no_such_module]"])
    with pytest.raises(UserError, match="grpo.env_modules: No module named 'no_such_module'"):
        setup(cfg, "no-model-needed", None)
    cfg = load_config(RLVRStageConfig, None, ["grpo.env_options={math: {strict: true}}"])
    with pytest.raises(UserError, match=r"grpo.env_options.math: MathEnv\(\) takes no arguments"):
        setup(cfg, "no-model-needed", None)
    cfg = load_config(RLVRStageConfig, None, ["grpo.env_options={code: {}}"])
    with pytest.raises(UserError, match=r"grpo.env_options: \['code'\] are not environments of this run"):
        setup(cfg, "no-model-needed", None)


def test_dynamic_sampling_swaps_zero_variance_groups_for_fresh_prompts():
    """collect() with a stub run: prompts whose id is even get all-equal rewards (no signal)."""
    from types import SimpleNamespace

    from stages.grpo_loop import GRPOConfig, PhaseTimer, collect

    tasks = [{"id": i, "env": "math"} for i in range(40)]

    def score(ts, groups):
        r = torch.tensor([[0.0, 0.0] if t["id"] % 2 == 0 else [0.0, 1.0] for t in ts])
        return r, [Score(float(x)) for x in r.flatten()]

    def run_with(dynamic: bool, rounds: int):
        g = GRPOConfig(prompts_per_step=4, group_size=2, dynamic_sampling=dynamic, max_resample_rounds=rounds)
        generate = lambda ts, n, sampling, seed: [[f"{t['id']}:{k}" for k in range(n)] for t in ts]  # noqa: E731
        return SimpleNamespace(g=g, sampler=TaskSampler({"math": tasks}, {"math": 1.0}, seed=3), score=score,
                               generate=generate)

    ts, groups, rewards, scores, rounds = collect(run_with(False, 2), 1, PhaseTimer())
    assert rounds == 0 and any(t["id"] % 2 == 0 for t in ts)  # without it, dead groups stay
    ts, groups, rewards, scores, rounds = collect(run_with(True, 8), 1, PhaseTimer())
    assert 1 <= rounds <= 8 and all(t["id"] % 2 == 1 for t in ts)  # every dead group replaced
    assert [grp[0].split(":")[0] for grp in groups] == [str(t["id"]) for t in ts]  # groups follow their task
    assert rewards.tolist() == [[0.0, 1.0]] * 4 and len(scores) == 8
    ts, _, rewards, _, rounds = collect(run_with(True, 1), 1, PhaseTimer())
    assert rounds == 1  # at most max_resample_rounds extra rounds, even if dead groups remain


def test_offline_scoring_cli(tmp_path, capsys):
    from grpo.envs.__main__ import main

    rows = [{"id": "m1", "env": "math", "prompt": "1+1?", "answer": "2", "response": "r\n</think>\n\\boxed{2}"},
            {"id": "q1", "env": "mcqa", "prompt": "A or B?", "answer": "B", "response": "r\n</think>\nAnswer: A"},
            {"id": "m2", "prompt": "2+2?", "answer": "4", "response": "r\n</think>\nfour"}]
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", "--input", str(f), "--env", "math"]) == 0
    out, err = capsys.readouterr()
    assert sorted(out.splitlines()) == ["m1\t1\tcorrect", "m2\t0\tno \\boxed{} answer",
                                        "q1\t0\twrong answer 'A' (expected 'B')"]  # in the order scored
    assert "3 rows, mean reward 0.333" in err
    f.write_text(json.dumps({"env": "math", "prompt": "x", "answer": "1"}) + "\n")
    assert main(["score", "--input", str(f)]) == 2
    assert f"{f}:1: response: missing" in capsys.readouterr().err


def test_refit_weights_travel_as_numpy_and_come_back_equal():
    import numpy as np

    from common.ray_utils import from_wire, to_wire

    state = {"w": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "n": torch.arange(6)}
    wire = to_wire(state)
    assert all(isinstance(arr, np.ndarray) for _, arr in wire.values())
    back = from_wire(wire)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in state.items())
    assert from_wire(state)["w"] is state["w"]  # plain tensors pass unchanged
