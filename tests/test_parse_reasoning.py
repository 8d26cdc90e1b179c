"""Parsing generated text, training-time reasoning augmentation, and the inference thinking budget."""
import random

import pytest
import torch
from transformers import AutoTokenizer

from chat_template.build_tokenizer import DEFAULT_OUT
from chat_template.conversation import normalize
from chat_template.parse import final_answer, parse_response, parse_tool_calls
from chat_template.reasoning import (BudgetTokens, ReasoningAugmentConfig, ThinkingBudgetProcessor,
                                     augment_reasoning, generate_with_budget)
from tests.test_chat_template import WEATHER


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(DEFAULT_OUT)


def test_reasoning_split_variants():
    r = parse_response("2+2 is 4\n</think>\nThe answer is \\boxed{4}<|im_end|>")
    assert (r.reasoning, r.content, r.reasoning_closed) == ("2+2 is 4", "The answer is \\boxed{4}", True)
    r = parse_response("still thinking about it and then the budget ran ou")  # no </think>
    assert r.reasoning.startswith("still") and r.content == "" and r.reasoning_closed is False
    r = parse_response("Just the answer.", thinking=False)  # reasoning OFF: prompt had <think></think>
    assert (r.reasoning, r.content) == (None, "Just the answer.")
    r = parse_response("<think>\nx\n</think>\nA", thinking=False)  # full text incl. the opening tag
    assert (r.reasoning, r.content) == ("x", "A")
    assert parse_response("</think>\nA").reasoning is None  # empty reasoning
    assert final_answer("r\n</think>\n\n  42  ") == "42"


def test_tool_call_parsing_decodes_json_values():
    text = ("Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n"
            "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=log>\n"
            "<parameter=payload>\n{\"a\": [1, 2], \"b\": null}\n</parameter>\n<parameter=flag>\ntrue\n</parameter>\n"
            "<parameter=note>\n123 is a number\n</parameter>\n</function>\n</tool_call>\n")
    r = parse_response("plan\n</think>\n" + text, tools=[WEATHER])
    assert r.content == "Let me check."
    assert r.tool_calls == [
        {"name": "get_weather", "arguments": {"city": "New York", "days": 3}},
        {"name": "log", "arguments": {"payload": {"a": [1, 2], "b": None}, "flag": True, "note": "123 is a number"}}]
    # A declared string stays a string even when it looks like JSON.
    _, calls, _ = parse_tool_calls("<tool_call>\n<function=get_weather>\n<parameter=city>\n1234\n</parameter>\n"
                                   "</function>\n</tool_call>", [WEATHER])
    assert calls[0]["arguments"]["city"] == "1234"
    content, calls, bad = parse_tool_calls("ok <tool_call>\n<function=get_weather>\n<parameter=city>\nPar")
    assert (content, calls, bad) == ("ok", [], 1)


def test_parse_round_trips_the_template(tok):
    """What the template renders for a tool-calling turn parses back to the same call."""
    msgs, tools = normalize([{"role": "user", "content": "?"}, {"role": "assistant", "content": "Sure.",
                             "reasoning_content": "r", "tool_calls": [{"function": {"name": "get_weather",
                             "arguments": {"city": "Oslo", "days": 2}}}]}], [WEATHER])
    text = tok.apply_chat_template(msgs, tools=tools, tokenize=False)
    completion = text.split("<|im_start|>assistant\n<think>\n")[1]
    r = parse_response(completion, tools=tools)
    assert r.reasoning == "r" and r.content == "Sure."
    assert r.tool_calls == [{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}]


def test_training_time_augmentation_fractions(tok):
    msgs, _ = normalize([{"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a", "reasoning_content": " ".join(["word"] * 200)}])
    cfg = ReasoningAugmentConfig(strip_fraction=0.10, truncate_fraction=0.03, truncate_budget_tokens=16)
    rng = random.Random(0)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    actions = []
    for _ in range(4000):
        out, action = augment_reasoning(msgs, rng, cfg, enc, tok.decode)
        actions.append(action)
        if action == "strip":
            assert out[1]["reasoning_content"] is None and out[1]["content"] == "a"
        elif action == "truncate":
            assert len(enc(out[1]["reasoning_content"])) <= 16
        else:
            assert out == msgs
    assert abs(actions.count("strip") / 4000 - 0.10) < 0.02
    assert abs(actions.count("truncate") / 4000 - 0.03) < 0.01
    no_reasoning, _ = normalize([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert augment_reasoning(no_reasoning, rng, cfg, enc, tok.decode)[1] == "none"


def fake_ids():
    # think_end=5, eos=3, newline tokens {9}, forced sequence [9, 9, 5] ("\n", "\n", "</think>")
    return BudgetTokens(think_end=5, force=[9, 9, 5], newline={9}, eos=3)


def run_processor(proc, script, steps):
    """Drive the processor like generate would: the model 'wants' script[i] at step i."""
    seq = [1, 1]
    for i in range(steps):
        scores = torch.zeros(1, 12)
        scores[0, script[i] if i < len(script) else 7] = 10.0
        scores = proc(torch.tensor([seq]), scores)
        seq.append(int(scores.argmax()))
    return seq[2:]


def test_budget_processor_waits_for_newline_within_grace():
    proc = ThinkingBudgetProcessor(prompt_len=2, budget=4, grace=3, ids=fake_ids())
    # Newline arrives 2 tokens after the budget: forced right after it.
    assert run_processor(proc, [7, 7, 7, 7, 7, 9, 8, 8, 8, 8], 10)[:9] == [7, 7, 7, 7, 7, 9, 9, 9, 5]
    # No newline within grace: forced after budget + grace tokens.
    assert run_processor(proc, [7] * 20, 10) == [7] * 7 + [9, 9, 5]
    # Closing </think> on its own before the budget: never forced.
    assert run_processor(proc, [7, 5, 7, 7, 7, 7, 7, 7, 7, 7], 10) == [7, 5] + [7] * 8


def test_phased_budget_matches_processor_rule():
    script = [7, 7, 7, 7, 7, 9, 8, 8, 8, 8, 8, 8, 3]

    def scripted_generate(prompts, max_tokens, stop):
        outs = []
        for p in prompts:
            done = len(p) - 2
            out = []
            while len(out) < max_tokens:
                t = script[done + len(out)] if done + len(out) < len(script) else 3
                out.append(t)
                if t in stop:
                    break
            outs.append(out)
        return outs

    got = generate_with_budget(scripted_generate, [[1, 1]], budget=4, grace=3, max_new_tokens=12, ids=fake_ids())
    assert got[0][:9] == [7, 7, 7, 7, 7, 9, 9, 9, 5]
    assert len(got[0]) <= 12


def test_budget_with_real_model_hf_generate(tok):
    from common.models import build_model, load_tokenizer
    from stages.config import load_config
    from stages.schema import RunConfig

    cfg = load_config(RunConfig, None, ["model=tiny_llama"]).model
    model = build_model(cfg, load_tokenizer(cfg)).eval()
    ids = BudgetTokens.from_tokenizer(tok)
    prompt = torch.tensor([tok("<|im_start|>assistant\n<think>\n", add_special_tokens=False)["input_ids"]])
    proc = ThinkingBudgetProcessor(prompt.shape[1], budget=8, grace=4, ids=ids)
    out = model.generate(prompt, max_new_tokens=30, do_sample=False, logits_processor=[proc],
                         pad_token_id=tok.pad_token_id)[0, prompt.shape[1]:].tolist()
    assert ids.think_end in out
    end = out.index(ids.think_end)
    assert 8 + len(ids.force) - 1 <= end <= 8 + 4 + len(ids.force) - 1
    assert out[end - len(ids.force) + 1: end + 1] == ids.force
