"""instruction_following env: every constraint passes and fails where it should, the env scores only
the final answer, and the generated default task set is deterministic and satisfiable."""
import json

import pytest

import grpo.envs.instruction_following as ifm
from grpo.envs import make

W = "word "
# (constraint, answer, expected): each type at least once passing and once failing, near misses included.
CASES = [
    ({"type": "word_count", "relation": "at_least", "n": 50}, W * 50, True),
    ({"type": "word_count", "relation": "at_least", "n": 50}, W * 49, False),
    ({"type": "word_count", "relation": "at_most", "n": 3}, "don't stop now", True),  # don't = one word
    ({"type": "word_count", "relation": "exactly", "n": 3}, "well-known fact", True),  # well-known = two
    ({"type": "word_count", "relation": "exactly", "n": 3}, "one two three four", False),
    ({"type": "sentence_count", "relation": "exactly", "n": 3}, "Hi there. How are you? Fine!", True),
    ({"type": "sentence_count", "relation": "exactly", "n": 1}, "Pi is 3.14 today.", True),
    ({"type": "sentence_count", "relation": "exactly", "n": 1}, "One. Two", False),
    ({"type": "paragraph_count", "relation": "exactly", "n": 3}, "a\n\nb\n \n\nc", True),
    ({"type": "paragraph_count", "relation": "exactly", "n": 2}, "a\nb", False),
    ({"type": "include_keywords", "keywords": ["apple", "ice cream"]}, "An Apple and ICE\ncream.", True),
    ({"type": "include_keywords", "keywords": ["apple"]}, "I ate a pineapple.", False),  # substring only
    ({"type": "include_keywords", "keywords": ["apple"]}, "I ate apples.", False),
    ({"type": "exclude_keywords", "keywords": ["cat"]}, "a category of concatenation", True),
    ({"type": "exclude_keywords", "keywords": ["cat"]}, "The Cat sat.", False),
    ({"type": "keyword_frequency", "keyword": "cat", "relation": "exactly", "n": 3}, "cat, Cat; CAT category", True),
    ({"type": "keyword_frequency", "keyword": "cat", "relation": "at_least", "n": 4}, "cat, Cat; CAT category", False),
    ({"type": "letter_frequency", "letter": "a", "relation": "exactly", "n": 3}, "BanAna", True),
    ({"type": "letter_frequency", "letter": "A", "relation": "at_most", "n": 2}, "banana", False),
    ({"type": "all_lowercase"}, "hello world, 123!", True),
    ({"type": "all_lowercase"}, "hello World", False),  # one capital
    ({"type": "all_lowercase"}, "123 !!", False),  # no letters
    ({"type": "all_uppercase"}, "HELLO, WORLD!", True),
    ({"type": "all_uppercase"}, "HELLO wORLD", False),
    ({"type": "capital_word_frequency", "relation": "at_least", "n": 3}, "I LOVE NASA and Rust", True),
    ({"type": "capital_word_frequency", "relation": "at_most", "n": 2}, "I LOVE NASA and Rust", False),
    ({"type": "json_format"}, ' {"a": 1} ', True),
    ({"type": "json_format"}, '```json\n{"a": [1, 2]}\n```', True),  # fenced
    ({"type": "json_format"}, '{"a": 1} hope this helps', False),  # trailing text
    ({"type": "json_format"}, 'Here it is: {"a": 1}', False),
    ({"type": "json_format"}, '```json\n{"a": 1}\n```\nDone.', False),  # text after the fence
    ({"type": "bullet_count", "n": 3}, "Fruits:\n* apple\n* pear\n- plum", True),
    ({"type": "bullet_count", "n": 3}, "* a\n* b\n* c\n* d", False),  # 4 when exactly 3
    ({"type": "bullet_count", "n": 1}, "*bold* text\n-not a bullet", False),
    ({"type": "section_count", "splitter": "SECTION", "n": 2}, "SECTION 1\nfoo\nSECTION 2\nbar", True),
    ({"type": "section_count", "splitter": "SECTION", "n": 2}, "SECTION 1\nfoo\nSECTION 3\nbar", False),
    ({"type": "section_count", "splitter": "Part", "n": 3}, "Part 1\nfoo\nPart 2\nbar", False),
    ({"type": "highlighted_sections", "n": 2}, "This is *important* and *this too*.", True),
    ({"type": "highlighted_sections", "n": 1}, "* a bullet\n**bold** and 2 * 3 * 4 and ** here", False),
    ({"type": "title"}, "<<My Poem>>\nroses are red", True),
    ({"type": "title"}, "<My Poem> and <<>>", False),
    ({"type": "starts_with", "phrase": "Yes"}, "  Yes, it is.", True),
    ({"type": "starts_with", "phrase": "Yes"}, "Yesterday it was.", False),  # not a whole word
    ({"type": "starts_with", "phrase": "Yes"}, "yes it is", False),  # case-sensitive
    ({"type": "ends_with", "phrase": "Any other questions?"}, "That is all. Any other questions?\n", True),
    ({"type": "ends_with", "phrase": "Any other questions?"}, "Any other questions? Thanks", False),
    ({"type": "ends_with", "phrase": "the end"}, "and that was the end.", False),  # nothing after, not even "."
    ({"type": "wrapped_in_quotes"}, '  "hello there"\n', True),
    ({"type": "wrapped_in_quotes"}, '"hello" there', False),
    ({"type": "no_commas"}, "no commas here.", True),
    ({"type": "no_commas"}, "one, two", False),
    ({"type": "placeholder_count", "n": 2}, "Send it to [address] by [date].", True),
    ({"type": "placeholder_count", "n": 2}, "Send it to [address], see [docs](http://x) or []", False),
    ({"type": "postscript"}, "Hello friend.\n\nP.S. See you soon.", True),
    ({"type": "postscript", "marker": "P.P.S"}, "Hi.\nP.P.S more", True),
    ({"type": "postscript"}, "P.S. only a postscript", False),  # no main text before it
    ({"type": "postscript"}, "Hello, P.S. inline is not a postscript", False),
    ({"type": "repeat_prompt", "prompt": "What is 2+2?"}, "What is 2+2? It is 4.", True),
    ({"type": "repeat_prompt", "prompt": "What is 2+2?"}, "what is 2+2? It is 4.", False),
    ({"type": "two_responses"}, "Answer A\n******\nAnswer B", True),
    ({"type": "two_responses"}, "Same\n******\nSame", False),
    ({"type": "two_responses"}, "A\n*****\nB", False),  # five asterisks
    ({"type": "two_responses"}, "A\n******\nB\n******\nC", False),
    ({"type": "response_language_script", "script": "cyrillic"}, "Привет, как дела? 123", True),
    ({"type": "response_language_script", "script": "cyrillic"}, "Hello мир", False),
    ({"type": "response_language_script", "script": "cjk"}, "你好，世界。こんにちは", True),
    ({"type": "response_language_script", "script": "latin"}, "Héllo wörld, ça va", True),
    ({"type": "response_language_script", "script": "greek"}, "Γειά σου κόσμε", True),
    ({"type": "response_language_script", "script": "arabic"}, "مرحبا بالعالم", True),
    ({"type": "response_language_script", "script": "arabic"}, "hello world", False),
]


@pytest.mark.parametrize("constraint,text,expected", CASES, ids=[f"{c['type']}-{i}" for i, (c, *_) in enumerate(CASES)])
def test_constraint(constraint, text, expected):
    ok, detail = ifm.check(constraint, text)
    assert ok is expected, detail
    assert isinstance(detail, str) and detail


def test_every_constraint_type_has_a_pass_and_a_fail_case():
    seen = {(c["type"], e) for c, _, e in CASES}
    missing = [(t, e) for t in ifm.CONSTRAINTS for e in (True, False) if (t, e) not in seen]
    assert not missing
    assert len(ifm.CONSTRAINTS) >= 24


def test_count_detail_names_the_counts():
    ok, detail = ifm.check({"type": "word_count", "relation": "at_least", "n": 50}, W * 42)
    assert not ok and detail == "42 words, need at_least 50"


@pytest.mark.parametrize("constraint,match", [
    ({"type": "word_count", "n": 5}, "missing field 'relation'"),
    ({"type": "word_count", "relation": "more_than", "n": 5}, "relation must be one of"),
    ({"type": "word_count", "relation": "at_least", "n": "5"}, "field 'n' must be"),
    ({"type": "include_keywords", "keywords": []}, "keywords"),
    ({"type": "letter_frequency", "letter": "ab", "relation": "exactly", "n": 1}, "single letter"),
    ({"type": "response_language_script", "script": "klingon"}, "script"),
    ({"type": "starts_with"}, "missing field 'phrase'"),
    ("word_count", "must be a dict"),
])
def test_malformed_constraint_raises(constraint, match):
    with pytest.raises(ValueError, match=match):
        ifm.check(constraint, "some text")


def test_unknown_constraint_type_lists_known_types():
    with pytest.raises(ValueError, match="unknown constraint type 'haiku'") as e:
        ifm.check({"type": "haiku"}, "text")
    assert all(t in str(e.value) for t in ifm.CONSTRAINTS)


# ---- the environment ---------------------------------------------------------------------------

def _task(constraints, **kw):
    return {"id": "t", "env": "instruction_following", "messages": [{"role": "user", "content": "q"}],
            "constraints": constraints, **kw}


def _resp(answer, reasoning="let me think"):
    return f"{reasoning}\n</think>\n{answer}<|im_end|>"


@pytest.fixture(scope="module")
def env():
    return make("instruction_following")


THREE = [{"type": "all_lowercase"}, {"type": "word_count", "relation": "at_least", "n": 5}, {"type": "no_commas"}]


def test_env_is_registered(env):
    assert isinstance(env, ifm.InstructionFollowingEnv) and env.name == "instruction_following"


def test_binary_vs_fraction_mode(env):
    resp = _resp("hello there, friend")  # lowercase ok; 3 words; a comma
    binary = env.score(_task(THREE), resp)
    frac = env.score(_task(THREE, mode="fraction"), resp)
    assert binary.reward == 0.0 and frac.reward == pytest.approx(1 / 3)
    assert binary.reason.startswith("word_count: 3 words, need at_least 5")
    assert binary.info == {"constraints_passed": 1.0, "constraints_total": 3.0} == frac.info
    good = _resp("hello there my dear friend")
    for mode in ("all", "fraction"):
        s = env.score(_task(THREE, mode=mode), good)
        assert s.reward == 1.0 and s.reason == "all 3 constraints met"


def test_reasoning_is_ignored(env):
    task = _task([{"type": "include_keywords", "keywords": ["banana"]}])
    assert env.score(task, _resp("Here is my answer.", reasoning="I will say banana")).reward == 0.0
    assert env.score(task, _resp("A banana.", reasoning="no fruit here")).reward == 1.0
    # a comma in the reasoning does not break "no commas"
    assert env.score(_task([{"type": "no_commas"}]), _resp("fine", reasoning="well, hmm")).reward == 1.0


def test_unclosed_reasoning_scores_zero(env):
    resp = "thinking and thinking without ever finishing"
    for mode in ("all", "fraction"):  # "no commas" would trivially hold on an empty answer
        s = env.score(_task([{"type": "no_commas"}, {"type": "all_lowercase"}], mode=mode), resp)
        assert s.reward == 0.0 and "reasoning never closed" in s.reason


def test_thinking_off_reads_the_whole_response(env):
    task = _task([{"type": "all_uppercase"}], enable_thinking=False)
    assert env.score(task, "HELLO<|im_end|>").reward == 1.0
    assert env.score(task, "Hello<|im_end|>").reward == 0.0


def test_malformed_tasks_raise(env):
    with pytest.raises(ValueError, match="known types: .*word_count"):
        env.score(_task([{"type": "haiku"}]), _resp("x"))
    with pytest.raises(ValueError, match="constraints"):
        env.score({"id": "t", "env": "instruction_following"}, _resp("x"))
    with pytest.raises(ValueError, match="mode"):
        env.score(_task(THREE, mode="most"), _resp("x"))
    # a malformed task is reported even when the answer is empty
    with pytest.raises(ValueError, match="missing field 'n'"):
        env.score(_task([{"type": "bullet_count"}]), "never closed")


# ---- the generated default task set ------------------------------------------------------------

def _compliant(task) -> str:
    """A hand-written answer meeting the task's constraints (one per generator template)."""
    c = {x["type"]: x for x in task["constraints"]}
    if "all_uppercase" in c:
        return c["include_keywords"]["keywords"][0].upper()
    if "json_format" in c:
        return "```json\n" + json.dumps({c["include_keywords"]["keywords"][0]: 1}) + "\n```"
    if "bullet_count" in c:
        return "\n".join("* item" for _ in range(c["bullet_count"]["n"]))
    if "keyword_frequency" in c:
        return " ".join([c["keyword_frequency"]["keyword"]] * c["keyword_frequency"]["n"])
    if "word_count" in c:
        return " ".join(["word"] * c["word_count"]["n"])
    return {"all_lowercase": "blue", "sentence_count": "The sea is blue.", "title": "<<A Long Day>>",
            "ends_with": "It was good and that is the end", "exclude_keywords": "red or blue",
            "wrapped_in_quotes": '"apple"', "starts_with": "Yes it is."}[next(iter(c))]


def test_generate_tasks_deterministic_and_valid(env):
    tasks = ifm.generate_tasks(20, 0)
    assert tasks == ifm.generate_tasks(20, 0) and tasks != ifm.generate_tasks(20, 1)
    assert [t["id"] for t in tasks] == [f"if-0-{i}" for i in range(20)]
    assert len({t["messages"][0]["content"] for t in tasks}) >= 10
    for t in tasks:
        assert t["env"] == "instruction_following" and t["messages"][0]["role"] == "user"
        assert 1 <= len(t["constraints"]) <= 2
        assert all(c["type"] in ifm.CONSTRAINTS for c in t["constraints"])
        assert env.score(t, _resp("")).reward == 0.0  # validates every constraint's fields


def test_generated_tasks_are_satisfiable(env):
    tasks = ifm.generate_tasks(60, 3)
    kinds = {tuple(c["type"] for c in t["constraints"]) for t in tasks}
    assert len(kinds) >= 8  # the generator mixes its templates
    for t in tasks:
        s = env.score(t, _resp(_compliant(t)))
        assert s.reward == 1.0, (t["messages"][0]["content"], s.reason)
