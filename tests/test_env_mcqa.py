"""The mcqa environment: strict letter extraction (no false positives) and its scoring."""
import pytest

import grpo.envs.mcqa  # noqa: F401  (registers "mcqa")
from grpo.envs import make
from grpo.envs.mcqa import extract_choice, generate_tasks

TASK = {"id": "t", "env": "mcqa", "messages": [], "choices": ["1", "2", "3", "4"], "answer": "B"}


def reply(answer: str) -> str:
    return f"Let me think.\n</think>\n{answer}<|im_end|>"


@pytest.mark.parametrize("text", [
    r"\boxed{B}", r"\boxed{(B)}", r"\boxed{\text{B}}", r"\boxed{B.}", r"So it is \boxed{ b }.",
    "Answer: B", "The answer is (B).", "Final answer: b", "(B)", "B", "B.", "answer: b",
    "Two is even.\nThe answer is B", "**Answer:** B",
])
def test_extracts_each_format(text):
    assert extract_choice(text) == "B"


@pytest.mark.parametrize("text", [
    "A cat is an animal.",                     # the article, not an answer
    "B is wrong, so the sum must be larger.",  # a letter mid-text, no final-format line
    "The answer is B because 1 + 1 = 2.",      # not a final-format line
    r"\boxed{42}", r"\boxed{AB}", "", "Answers",
])
def test_no_false_positives(text):
    assert extract_choice(text) is None


def test_last_letter_box_counts():
    assert extract_choice(r"First \boxed{A}, no wait: \boxed{C}") == "C"
    assert extract_choice(r"\boxed{C} and the sum is \boxed{42}") == "C"  # a box without a letter gives none


def test_n_choices_bounds_letters():
    assert extract_choice("Answer: E") == "E"
    assert extract_choice("Answer: E", n_choices=4) is None
    assert extract_choice("Answer: D", n_choices=4) == "D"


@pytest.mark.parametrize("response, reward, reason", [
    (reply(r"\boxed{B}"), 1.0, "correct"),
    (reply("The answer is (b)."), 1.0, "correct"),
    (reply(r"\boxed{C}"), 0.0, "wrong answer 'C' (expected 'B')"),
    (reply("Answer: E"), 0.0, "invalid answer letter 'E' (choices A-D)"),
    (reply(r"\boxed{A} ... actually \boxed{B}"), 1.0, "correct"),
    (reply(r"\boxed{42}"), 0.0, "no answer letter found"),
    (reply("A cat is an animal."), 0.0, "no answer letter found"),
    (reply("Answers"), 0.0, "no answer letter found"),  # not "Answer" + "s"
    ("... so the answer is B\n</think>\nI am not sure<|im_end|>", 0.0, "no answer letter found"),
    ("The answer is B.\nAnswer: B", 0.0, "no answer letter found"),  # reasoning never closed
])
def test_score(response, reward, reason):
    s = make("mcqa").score(TASK, response)
    assert (s.reward, s.reason) == (reward, reason)
    assert s.info == {"answered": 0.0 if reason.startswith("no answer") else 1.0}


def test_without_choices_letters_go_to_j():
    env = make("mcqa")
    assert env.score({"answer": "H"}, reply("Answer: H")).reward == 1.0
    assert env.score({"answer": "H"}, reply("Answer: K")).reason == "invalid answer letter 'K' (choices A-J)"


def test_thinking_off_reads_whole_response():
    task = {**TASK, "enable_thinking": False}
    assert make("mcqa").score(task, "Answer: B<|im_end|>").reward == 1.0


@pytest.mark.parametrize("task", [{"choices": ["x", "y"]}, {"answer": "E", "choices": ["1", "2", "3", "4"]},
                                  {"answer": "BC"}])
def test_malformed_task_raises(task):
    with pytest.raises(ValueError, match="answer must be one letter"):
        make("mcqa").score(task, reply(r"\boxed{B}"))


def test_generate_tasks():
    tasks = generate_tasks(40, seed=3)
    assert tasks == generate_tasks(40, seed=3)
    assert tasks != generate_tasks(40, seed=4)
    assert [t["id"] for t in tasks[:2]] == ["mcqa-3-0", "mcqa-3-1"]
    assert len({t["answer"] for t in tasks}) == 4  # the correct letter moves around
    env = make("mcqa")
    for t in tasks:
        assert t["env"] == "mcqa" and len(t["choices"]) == 4
        content = t["messages"][0]["content"]
        assert t["messages"][0]["role"] == "user" and "\\boxed{}" in content
        assert f"{t['answer']}. {t['choices']['ABCD'.index(t['answer'])]}" in content
        assert env.score(t, reply(f"\\boxed{{{t['answer']}}}")).reward == 1.0
        wrong = "A" if t["answer"] != "A" else "B"
        assert env.score(t, reply(f"\\boxed{{{wrong}}}")).reward == 0.0
