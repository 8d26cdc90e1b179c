"""Instruction following (IFEval-style): reward answers that obey checkable format constraints.

A task lists constraints ("at least 50 words", "exactly 3 bullets", "all lowercase", ...), each
verified by a small pure function on the final answer, so the reward needs no judge model and cannot
be argued into a pass. Only the final answer counts, never the reasoning: that is what the user sees.

Mode "all" (the default) pays 1.0 only when every constraint holds, the strict IFEval signal;
mode "fraction" pays the share that holds, a denser signal for a weak policy.
"""
from __future__ import annotations

import json
import operator
import random
import re
import unicodedata
from collections.abc import Callable

from chat_template.parse import parse_response
from grpo.envs import Environment, Score, register

RELATIONS = {"at_least": operator.ge, "at_most": operator.le, "exactly": operator.eq}
# A word: a run of letters, digits or underscores; an inner apostrophe keeps it one word
# ("don't" is 1 word, "well-known" 2, "3.5" 2).
WORD = re.compile(r"\w+(?:['’]\w+)*")
BULLET = re.compile(r"^[ \t]*[*-][ \t]+\S", re.M)
# *highlight*: single asterisks hugging non-empty text (markdown emphasis), so **bold**, bullet
# markers ("* item") and arithmetic ("2 * 3 * 4") are not highlights.
HIGHLIGHT = re.compile(r"(?<!\*)\*(?![\s*])[^*\n]+?(?<!\s)\*(?!\*)")
PLACEHOLDER = re.compile(r"\[[^\[\]\n]*\w[^\[\]\n]*\](?!\()")  # [address]; not a markdown link [text](url)
SCRIPTS = {"latin": ("LATIN",), "cyrillic": ("CYRILLIC",), "greek": ("GREEK",), "arabic": ("ARABIC",),
           "cjk": ("CJK", "IDEOGRAPHIC", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO")}


# ---- parameters -------------------------------------------------------------------------------

def _get(p: dict, key: str, kind: type, default=None):
    """A constraint parameter of type `kind`, or a ValueError saying what is missing or wrong."""
    if key not in p:
        if default is None:
            raise ValueError(f"missing field {key!r}")
        return default
    v = p[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)) or (kind is str and not v.strip()):
        raise ValueError(f"field {key!r} must be {kind.__name__}{' (non-empty)' * (kind is str)}, got {v!r}")
    return v


def _compare(count: int, p: dict, unit: str, relation: str | None = None) -> tuple[bool, str]:
    """`count` against the constraint's relation and n; `relation` is the default if it names none."""
    rel = _get(p, "relation", str, relation)
    if rel not in RELATIONS:
        raise ValueError(f"relation must be one of {sorted(RELATIONS)}, got {rel!r}")
    n = _get(p, "n", int)
    return RELATIONS[rel](count, n), f"{count} {unit}, need {rel} {n}"


def _keywords(p: dict) -> list[str]:
    kws = _get(p, "keywords", list)
    if not kws or not all(isinstance(k, str) and k.strip() for k in kws):
        raise ValueError(f"field 'keywords' must be a non-empty list of non-empty strings, got {kws!r}")
    return kws


def _phrase(kw: str) -> re.Pattern:
    """Whole word/phrase, case-insensitive: "cat" is not in "category"; inner spaces match any whitespace."""
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, kw.split())) + r"(?!\w)", re.I)


# ---- constraints: (answer text, constraint dict) -> (passed, detail) ---------------------------

def word_count(text: str, p: dict) -> tuple[bool, str]:
    return _compare(len(WORD.findall(text)), p, "words")


def sentence_count(text: str, p: dict) -> tuple[bool, str]:
    """A sentence ends at a run of . ! ? followed by whitespace or the end (so "3.14" does not end one,
    but an abbreviation like "e.g. " does); a last fragment without an end mark counts too."""
    pieces = re.split(r"[.!?]+(?=\s|$)", text)
    return _compare(sum(bool(re.search(r"\w", s)) for s in pieces), p, "sentences")


def paragraph_count(text: str, p: dict) -> tuple[bool, str]:
    """Paragraphs are separated by one or more blank (or whitespace-only) lines."""
    return _compare(sum(bool(s.strip()) for s in re.split(r"\n\s*\n", text)), p, "paragraphs")


def include_keywords(text: str, p: dict) -> tuple[bool, str]:
    missing = [k for k in _keywords(p) if not _phrase(k).search(text)]
    return not missing, f"missing {missing}" if missing else "all keywords present"


def exclude_keywords(text: str, p: dict) -> tuple[bool, str]:
    found = [k for k in _keywords(p) if _phrase(k).search(text)]
    return not found, f"contains forbidden {found}" if found else "no forbidden keyword"


def keyword_frequency(text: str, p: dict) -> tuple[bool, str]:
    kw = _get(p, "keyword", str)
    return _compare(len(_phrase(kw).findall(text)), p, f"occurrences of {kw!r}")


def letter_frequency(text: str, p: dict) -> tuple[bool, str]:
    letter = _get(p, "letter", str)
    if len(letter) != 1 or not letter.isalpha():
        raise ValueError(f"field 'letter' must be a single letter, got {letter!r}")
    return _compare(text.lower().count(letter.lower()), p, f"letter {letter.lower()!r}")


def _one_case(text: str, case: str) -> tuple[bool, str]:
    """No letter of the other case, and at least one of this case (an answer without one fails)."""
    right, other = (str.isupper, str.islower) if case == "upper" else (str.islower, str.isupper)
    wrong = [c for c in text if other(c)]
    if wrong:
        return False, f"{len(wrong)} letters not {case}case, e.g. {wrong[0]!r}"
    ok = any(right(c) for c in text)
    return ok, f"all {case}case" if ok else f"no {case}case letters"


def all_lowercase(text: str, p: dict) -> tuple[bool, str]:
    return _one_case(text, "lower")


def all_uppercase(text: str, p: dict) -> tuple[bool, str]:
    return _one_case(text, "upper")


def capital_word_frequency(text: str, p: dict) -> tuple[bool, str]:
    """Words (see WORD) whose cased letters are all capitals: "NASA", "I", "DON'T"."""
    return _compare(sum(w.isupper() for w in WORD.findall(text)), p, "all-capital words")


def json_format(text: str, p: dict) -> tuple[bool, str]:
    """The whole answer is one JSON value, optionally inside a single ``` or ```json fence."""
    s = text.strip()
    fenced = re.fullmatch(r"```(?:json)?[ \t]*\n(.*?)```", s, re.S | re.I)
    try:
        json.loads(fenced.group(1) if fenced else s)
    except json.JSONDecodeError as e:
        return False, f"not valid JSON ({e.msg} at char {e.pos})"
    return True, "valid JSON"


def bullet_count(text: str, p: dict) -> tuple[bool, str]:
    """Markdown bullets: lines starting (after indentation) with "* " or "- " and some text."""
    return _compare(len(BULLET.findall(text)), p, "bullets", "exactly")


def section_count(text: str, p: dict) -> tuple[bool, str]:
    """Sections start at lines beginning `{splitter} 1`, `{splitter} 2`, ... (numbered 1, 2, ... in order)."""
    splitter = _get(p, "splitter", str, "SECTION")
    nums = [int(m) for m in re.findall(rf"^[ \t#*]*{re.escape(splitter)}[ \t]+(\d+)", text, re.M)]
    ok, detail = _compare(len(nums), p, "sections", "exactly")
    if ok and nums != list(range(1, len(nums) + 1)):
        return False, f"{splitter} numbers {nums}, need 1, 2, ... in order"
    return ok, detail


def highlighted_sections(text: str, p: dict) -> tuple[bool, str]:
    return _compare(len(HIGHLIGHT.findall(text)), p, "*highlighted* spans", "at_least")


def title(text: str, p: dict) -> tuple[bool, str]:
    ok = re.search(r"<<[^<>\n]*[^\s<>][^<>\n]*>>", text) is not None
    return ok, "has a <<title>>" if ok else "no <<title>> in double angular brackets"


def starts_with(text: str, p: dict) -> tuple[bool, str]:
    """Exact (case-sensitive) prefix of the stripped answer, ending on a word boundary ("Yes" does
    not start "Yesterday")."""
    phrase = _get(p, "phrase", str).strip()
    boundary = r"(?!\w)" if re.search(r"\w\Z", phrase) else ""
    ok = re.match(re.escape(phrase) + boundary, text.strip()) is not None
    return ok, f"starts with {phrase!r}" if ok else f"does not start with {phrase!r}"


def ends_with(text: str, p: dict) -> tuple[bool, str]:
    """Exact (case-sensitive) suffix on a word boundary: only whitespace may follow, not even a full stop."""
    phrase = _get(p, "phrase", str).strip()
    boundary = r"(?<!\w)" if re.match(r"\w", phrase) else ""
    ok = re.search(boundary + re.escape(phrase) + r"\Z", text.strip()) is not None
    return ok, f"ends with {phrase!r}" if ok else f"does not end with {phrase!r}"


def wrapped_in_quotes(text: str, p: dict) -> tuple[bool, str]:
    s = text.strip()
    ok = len(s) > 2 and (s[0], s[-1]) in {('"', '"'), ("“", "”")}
    return ok, "wrapped in double quotes" if ok else "not wrapped in double quotes"


def no_commas(text: str, p: dict) -> tuple[bool, str]:
    n = text.count(",") + text.count("，")
    return n == 0, f"{n} commas"


def placeholder_count(text: str, p: dict) -> tuple[bool, str]:
    return _compare(len(PLACEHOLDER.findall(text)), p, "[placeholders]", "at_least")


def postscript(text: str, p: dict) -> tuple[bool, str]:
    """A line starting with the marker (case-insensitive), after some main text and followed by text."""
    marker = _get(p, "marker", str, "P.S.")
    for m in re.finditer(rf"^[ \t*_]*{re.escape(marker)}", text, re.M | re.I):
        if re.search(r"\w", text[:m.start()]) and re.search(r"\w", text[m.end():]):
            return True, f"has a {marker} postscript"
    return False, f"no line starting with {marker!r} after the main text"


def repeat_prompt(text: str, p: dict) -> tuple[bool, str]:
    prompt = _get(p, "prompt", str).strip()
    ok = text.strip().startswith(prompt)
    return ok, "repeats the prompt" if ok else "does not start with the prompt verbatim"


def two_responses(text: str, p: dict) -> tuple[bool, str]:
    """Exactly two non-empty, different responses split by a line holding exactly six asterisks."""
    parts = [s.strip() for s in re.split(r"^[ \t]*\*{6}[ \t]*$", text, flags=re.M)]
    if len(parts) != 2:
        return False, f"{len(parts)} parts separated by ******, need 2"
    if not all(parts) or parts[0] == parts[1]:
        return False, "a response is empty" if not all(parts) else "the two responses are identical"
    return True, "two different responses"


def response_language_script(text: str, p: dict) -> tuple[bool, str]:
    """>= 90% of the letters belong to the script (by Unicode character name): a language-agnostic
    check that needs no language-detection model."""
    script = _get(p, "script", str)
    if script not in SCRIPTS:
        raise ValueError(f"field 'script' must be one of {sorted(SCRIPTS)}, got {script!r}")
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False, "no letters"
    share = sum(unicodedata.name(c, "").startswith(SCRIPTS[script]) for c in letters) / len(letters)
    return share >= 0.9, f"{share:.0%} of letters are {script}, need >= 90%"


CONSTRAINTS: dict[str, Callable[[str, dict], tuple[bool, str]]] = {f.__name__: f for f in (
    word_count, sentence_count, paragraph_count, include_keywords, exclude_keywords, keyword_frequency,
    letter_frequency, all_lowercase, all_uppercase, capital_word_frequency, json_format, bullet_count,
    section_count, highlighted_sections, title, starts_with, ends_with, wrapped_in_quotes, no_commas,
    placeholder_count, postscript, repeat_prompt, two_responses, response_language_script)}


def check(constraint: dict, text: str) -> tuple[bool, str]:
    """Run one constraint dict on `text`; a malformed constraint raises ValueError naming it."""
    if not isinstance(constraint, dict):
        raise ValueError(f"a constraint must be a dict with a 'type', got {constraint!r}")
    kind = constraint.get("type")
    if kind not in CONSTRAINTS:
        raise ValueError(f"unknown constraint type {kind!r}; known types: {', '.join(sorted(CONSTRAINTS))}")
    try:
        return CONSTRAINTS[kind](text, constraint)
    except ValueError as e:
        raise ValueError(f"constraint {kind}: {e}") from None


@register
class InstructionFollowingEnv(Environment):
    """Reward 1 when the final answer meets every constraint in `task["constraints"]` (mode "all"),
    or the fraction it meets (mode "fraction"). An answer that never left the reasoning scores 0,
    even where it would trivially pass ("no commas" in an empty answer)."""
    name = "instruction_following"

    def score(self, task: dict, response: str) -> Score:
        constraints, mode = task.get("constraints"), task.get("mode", "all")
        if not isinstance(constraints, list) or not constraints:
            raise ValueError("task needs a non-empty `constraints` list")
        if mode not in ("all", "fraction"):
            raise ValueError(f"mode must be 'all' or 'fraction', got {mode!r}")
        parsed = parse_response(response, thinking=task.get("enable_thinking", True))
        answer = parsed.content
        results = [check(c, answer) for c in constraints]  # validates the task even for an empty answer
        passed, total = sum(ok for ok, _ in results), len(results)
        if not answer.strip():
            why = "reasoning never closed" if not parsed.reasoning_closed else "empty answer"
            return Score(0.0, f"no final answer ({why})",
                         {"constraints_passed": 0.0, "constraints_total": float(total)})
        failed = [f"{c['type']}: {detail}" for c, (ok, detail) in zip(constraints, results) if not ok]
        reward = passed / total if mode == "fraction" else float(not failed)
        reason = f"{failed[0]} ({passed}/{total} met)" if failed else f"all {total} constraint{'s' * (total > 1)} met"
        return Score(reward, reason, {"constraints_passed": float(passed), "constraints_total": float(total)})


# ---- a default task set simple enough for the tiny model --------------------------------------

_NUM = ["zero", "one", "two", "three", "four"]
_TOPICS = ["the sea", "a cat", "the sun", "a tree", "rain", "a dog", "bread", "music"]
_WORDS = ["apple", "river", "moon", "green", "happy", "stone", "bird", "water"]
_KINDS = ["fruits", "colors", "animals", "trees", "drinks"]


def generate_tasks(n: int, seed: int) -> list[dict]:
    """`n` short seeded tasks with 1-2 constraints each, every constraint stated in plain words."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        topic, word, kind, k = rng.choice(_TOPICS), rng.choice(_WORDS), rng.choice(_KINDS), rng.randint(2, 4)
        templates = [
            (f"Write the word {word} in capital letters.",
             [{"type": "all_uppercase"}, {"type": "include_keywords", "keywords": [word]}]),
            (f"List {_NUM[k]} {kind} as bullet points, one per line, each starting with '* '.",
             [{"type": "bullet_count", "n": k}]),
            (f"Answer in lowercase letters only: what color is {topic}?", [{"type": "all_lowercase"}]),
            (f"Write one sentence about {topic} without using any commas.",
             [{"type": "sentence_count", "relation": "exactly", "n": 1}, {"type": "no_commas"}]),
            (f"Write at least {3 * k} words about {topic}.",
             [{"type": "word_count", "relation": "at_least", "n": 3 * k}]),
            (f"Describe {topic} in at most {3 * k} words.",
             [{"type": "word_count", "relation": "at_most", "n": 3 * k}]),
            (f"Use the word {word} at least {_NUM[k]} times.",
             [{"type": "keyword_frequency", "keyword": word, "relation": "at_least", "n": k}]),
            (f"Give a title for a story about {topic}, wrapped in double angular brackets like <<title>>.",
             [{"type": "title"}]),
            (f"Say something about {topic} and end your answer with the words 'the end'.",
             [{"type": "ends_with", "phrase": "the end"}]),
            (f"Name {_NUM[k]} {kind} without using the word 'and'.",
             [{"type": "exclude_keywords", "keywords": ["and"]}]),
            (f'Reply with only a JSON object that has the key "{word}".',
             [{"type": "json_format"}, {"type": "include_keywords", "keywords": [word]}]),
            (f"Name one of the {kind} and wrap your whole answer in double quotes.", [{"type": "wrapped_in_quotes"}]),
            (f"Is {topic} nice? Start your answer with the word Yes.", [{"type": "starts_with", "phrase": "Yes"}]),
        ]
        prompt, constraints = rng.choice(templates)
        tasks.append({"id": f"if-{seed}-{i}", "env": "instruction_following",
                      "messages": [{"role": "user", "content": prompt}], "constraints": constraints})
    return tasks
