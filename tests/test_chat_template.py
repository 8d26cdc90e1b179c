"""Golden renderings of the Nemotron 3 Nano chat format, masks, prefix preservation, bad input."""
import pytest
from transformers import AutoTokenizer

from chat_template.build_tokenizer import DEFAULT_OUT
from chat_template.conversation import ConversationError
from chat_template.render import MaskError, prompt_ids, render_text, render_with_mask, training_sequences

SYS0 = "<|im_start|>system\n<|im_end|>\n"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "integer", "description": "Forecast days"}}, "required": ["city"]}}}
TOOLS_BLOCK = (
    "# Tools\n\nYou have access to the following functions:\n\n<tools>\n<function>\n<name>get_weather</name>\n"
    "<description>Current weather for a city.</description>\n<parameters>\n"
    "<parameter>\n<name>city</name>\n<type>string</type>\n<description>City name</description>\n</parameter>\n"
    "<parameter>\n<name>days</name>\n<type>integer</type>\n<description>Forecast days</description>\n</parameter>\n"
    "<required>[\"city\"]</required>\n</parameters>\n</function>\n</tools>\n\n"
    "To call a function, reply with one or more calls in exactly this format, after any reasoning and with "
    "nothing after them:\n<tool_call>\n<function=example_function>\n<parameter=example_parameter>\nvalue\n"
    "</parameter>\n</function>\n</tool_call>\n\nCall only the functions listed above and give every required "
    "parameter. Write object and list values as JSON.")
CALL_PARIS = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\n"


def call(name, **args):
    return {"type": "function", "function": {"name": name, "arguments": args}}


# (id, messages, tools, expected full rendering, expected trained spans per training sequence)
GOLDEN = [
    ("single_turn_no_system",
     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], None,
     SYS0 + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think></think>Hello!<|im_end|>\n",
     [["Hello!<|im_end|>"]]),
    ("system_and_reasoning",
     [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": "\\boxed{4}", "reasoning_content": "2+2=4"}], None,
     "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
     "<|im_start|>assistant\n<think>\n2+2=4\n</think>\n\\boxed{4}<|im_end|>\n",
     [["2+2=4\n</think>\n\\boxed{4}<|im_end|>"]]),
    ("empty_system",
     [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], None,
     SYS0 + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think></think>Yo<|im_end|>\n",
     [["Yo<|im_end|>"]]),
    ("multi_turn_reasoning_split_per_user_turn",
     [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "a", "reasoning_content": "think a"},
      {"role": "user", "content": "B?"}, {"role": "assistant", "content": "b", "reasoning_content": "think b"}], None,
     SYS0 + "<|im_start|>user\nA?<|im_end|>\n<|im_start|>assistant\n<think></think>a<|im_end|>\n"
     "<|im_start|>user\nB?<|im_end|>\n<|im_start|>assistant\n<think>\nthink b\n</think>\nb<|im_end|>\n",
     [["think a\n</think>\na<|im_end|>"], ["think b\n</think>\nb<|im_end|>"]]),
    ("multi_turn_no_reasoning_one_sequence",
     [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "a"},
      {"role": "user", "content": "B?"}, {"role": "assistant", "content": "b"}], None,
     SYS0 + "<|im_start|>user\nA?<|im_end|>\n<|im_start|>assistant\n<think></think>a<|im_end|>\n"
     "<|im_start|>user\nB?<|im_end|>\n<|im_start|>assistant\n<think></think>b<|im_end|>\n",
     [["a<|im_end|>", "b<|im_end|>"]]),
    ("inline_think_in_content",
     [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>\nstep\n</think>\n\nA"}], None,
     SYS0 + "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nstep\n</think>\nA<|im_end|>\n",
     [["step\n</think>\nA<|im_end|>"]]),
    ("tools_call_response_answer",
     [{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city="Paris")]},
      {"role": "tool", "content": "{\"temp_c\": 21}"},
      {"role": "assistant", "content": "It is 21 C."}], [WEATHER],
     "<|im_start|>system\n" + TOOLS_BLOCK + "<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
     "<|im_start|>assistant\n<think></think>" + CALL_PARIS + "<|im_end|>\n"
     "<|im_start|>user\n<tool_response>\n{\"temp_c\": 21}\n</tool_response><|im_end|>\n"
     "<|im_start|>assistant\n<think></think>It is 21 C.<|im_end|>\n",
     [[CALL_PARIS + "<|im_end|>", "It is 21 C.<|im_end|>"]]),
    ("system_text_plus_tools_and_typed_arguments",
     [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Paris, 3 days"},
      {"role": "assistant", "content": "Checking.",
       "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                        "arguments": "{\"city\": \"Paris\", \"days\": 3, \"opts\": {\"u\": [1, 2]}}"}}]}],
     [WEATHER],
     "<|im_start|>system\nBe terse.\n\n" + TOOLS_BLOCK + "<|im_end|>\n<|im_start|>user\nParis, 3 days<|im_end|>\n"
     "<|im_start|>assistant\n<think></think>Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
     "</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=opts>\n{\"u\": [1, 2]}\n</parameter>\n</function>\n"
     "</tool_call>\n<|im_end|>\n",
     [["Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
       "</parameter>\n<parameter=opts>\n{\"u\": [1, 2]}\n</parameter>\n</function>\n</tool_call>\n<|im_end|>"]]),
    ("grouped_tool_responses",
     [{"role": "user", "content": "Paris and Rome?"},
      {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city="Paris"), call("get_weather", city="Rome")]},
      {"role": "tool", "content": "21"}, {"role": "tool", "content": "25"},
      {"role": "assistant", "content": "21 and 25."}], [WEATHER],
     "<|im_start|>system\n" + TOOLS_BLOCK + "<|im_end|>\n<|im_start|>user\nParis and Rome?<|im_end|>\n"
     "<|im_start|>assistant\n<think></think>" + CALL_PARIS + CALL_PARIS.replace("Paris", "Rome") + "<|im_end|>\n"
     "<|im_start|>user\n<tool_response>\n21\n</tool_response>\n<tool_response>\n25\n</tool_response><|im_end|>\n"
     "<|im_start|>assistant\n<think></think>21 and 25.<|im_end|>\n",
     [[CALL_PARIS + CALL_PARIS.replace("Paris", "Rome") + "<|im_end|>", "21 and 25.<|im_end|>"]]),
    ("multi_step_tool_use_after_last_user_keeps_reasoning",
     [{"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "ok", "reasoning_content": "old"},
      {"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": "", "reasoning_content": "need tool", "tool_calls": [call("get_weather", city="Paris")]},
      {"role": "tool", "content": "21"},
      {"role": "assistant", "content": "21 C.", "reasoning_content": "got 21"}], [WEATHER],
     "<|im_start|>system\n" + TOOLS_BLOCK + "<|im_end|>\n<|im_start|>user\nEarlier<|im_end|>\n"
     "<|im_start|>assistant\n<think></think>ok<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n"
     "<|im_start|>assistant\n<think>\nneed tool\n</think>\n" + CALL_PARIS + "<|im_end|>\n"
     "<|im_start|>user\n<tool_response>\n21\n</tool_response><|im_end|>\n"
     "<|im_start|>assistant\n<think>\ngot 21\n</think>\n21 C.<|im_end|>\n",
     [["old\n</think>\nok<|im_end|>"],
      ["need tool\n</think>\n" + CALL_PARIS + "<|im_end|>", "got 21\n</think>\n21 C.<|im_end|>"]]),
    ("unicode",
     [{"role": "user", "content": "Combien font 3×3 ? 日本語 🙂"}, {"role": "assistant", "content": "9 — neuf ✓"}], None,
     SYS0 + "<|im_start|>user\nCombien font 3×3 ? 日本語 🙂<|im_end|>\n<|im_start|>assistant\n<think></think>9 — neuf ✓<|im_end|>\n",
     [["9 — neuf ✓<|im_end|>"]]),
    ("whitespace_trimmed_and_multiline",
     [{"role": "user", "content": "Line 1\nLine 2"},
      {"role": "assistant", "content": "\n  Answer\n\nwith lines  \n", "reasoning_content": "\n r \n"}], None,
     SYS0 + "<|im_start|>user\nLine 1\nLine 2<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\nAnswer\n\nwith lines<|im_end|>\n",
     [["r\n</think>\nAnswer\n\nwith lines<|im_end|>"]]),
]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(DEFAULT_OUT)


def spans(tok, r):
    """Decode every maximal run of trained tokens."""
    out, cur = [], []
    for i, m in zip(r.input_ids, r.loss_mask):
        if m:
            cur.append(i)
        elif cur:
            out.append(tok.decode(cur)), cur.clear()
    if cur:
        out.append(tok.decode(cur))
    return out


@pytest.mark.parametrize("name,messages,tools,expected,expected_spans", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden(tok, name, messages, tools, expected, expected_spans):
    from chat_template.conversation import normalize

    norm, ntools = normalize(messages, tools)
    assert render_text(tok, norm, ntools) == expected  # the Jinja template through apply_chat_template
    seqs = training_sequences(tok, messages, tools)
    assert seqs[-1].text == expected  # the Python renderer agrees with the template
    assert seqs[-1].input_ids == tok(expected, add_special_tokens=False)["input_ids"]
    assert [spans(tok, s) for s in seqs] == expected_spans


def test_no_masked_role_token_is_ever_trained(tok):
    """Every trained token lies inside an assistant turn, after its generation prompt."""
    for _, messages, tools, _, _ in GOLDEN:
        for s in training_sequences(tok, messages, tools):
            toks = tok.convert_ids_to_tokens(s.input_ids)
            role, opened = None, None
            for i, (t, m) in enumerate(zip(toks, s.loss_mask)):
                if t == "<|im_start|>":
                    role = tok.decode(s.input_ids[i + 1: i + 4]).split("\n")[0]
                    opened = i
                if m:
                    assert role == "assistant", toks[max(0, i - 3): i + 3]
                    # never the role header or the generation prompt's think tags
                    header = tok.decode(s.input_ids[opened: i + 1])
                    assert header.startswith("<|im_start|>assistant\n<think>") and t not in ("<|im_start|>",)
                    assert not (t == "<think>" or (t == "</think>" and toks[i - 1] == "<think>"))
            assert s.loss_mask[-1] == 0  # the newline after <|im_end|>


def test_generation_prompts(tok):
    msgs = [{"role": "user", "content": "Hi"}]
    on = tok.decode(prompt_ids(tok, msgs))
    off = tok.decode(prompt_ids(tok, msgs, enable_thinking=False))
    assert on == SYS0 + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert off == SYS0 + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think></think>"


def test_history_reasoning_kept_when_truncation_off(tok):
    msgs = GOLDEN[3][1]
    text = render_text(tok, msgs, truncate_history_thinking=False)
    assert "<think>\nthink a\n</think>\na" in text and "<think>\nthink b\n</think>\nb" in text


def test_prompt_is_prefix_of_trained_sequence(tok):
    """RL and SFT agree: a conversation's generation prompt is exactly the masked prefix."""
    msgs = GOLDEN[1][1]
    seq = training_sequences(tok, msgs)[0]
    p = prompt_ids(tok, msgs[:-1])
    assert seq.input_ids[: len(p)] == p and not any(seq.loss_mask[: len(p)]) and seq.loss_mask[len(p)] == 1


@pytest.mark.parametrize("messages,tools,match", [
    ([{"role": "robot", "content": "x"}], None, r"messages\[0\]\.role: unknown role 'robot'"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call("f")]}], None,
     r"messages\[1\]\.tool_calls: tool calls need a `tools` list"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "<tool_call>\n<function=f>\n</function>\n</tool_call>"}],
     None, r"messages\[1\]\.content: contains a <tool_call> but the row declares no tools"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}], None,
     r"messages\[1\]: assistant turn has neither content nor tool_calls"),
    ([{"role": "user", "content": "x"}, {"role": "assistant"}], None, r"messages\[1\]: assistant turn has neither"),
    ([{"role": "user", "content": ["x"]}], None, r"messages\[0\]\.content: must be a string, got list"),
    ([{"role": "user", "content": 3}], None, r"messages\[0\]\.content: must be a string, got int"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "late"}], None, r"messages\[1\]\.role: a system message may only come first"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call("nope")]}], [WEATHER],
     r"messages\[1\]\.tool_calls\[0\]\.name: calls 'nope'"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "",
      "tool_calls": [{"function": {"name": "get_weather", "arguments": "{bad"}}]}], [WEATHER],
     r"messages\[1\]\.tool_calls\[0\]\.arguments: not valid JSON"),
    ([], None, r"messages: must be a non-empty list"),
])
def test_bad_conversations_fail_clearly(tok, messages, tools, match):
    with pytest.raises(ConversationError, match=match):
        training_sequences(tok, messages, tools)


def test_all_zero_mask_fails_loudly(tok):
    with pytest.raises(MaskError, match="all-zero loss mask"):
        training_sequences(tok, [{"role": "system", "content": "s"}, {"role": "user", "content": "only a question"}])
    with pytest.raises(MaskError, match="all-zero loss mask"):
        render_with_mask(tok, GOLDEN[4][1], train_from=4)
    user_trained = render_with_mask(tok, GOLDEN[0][1], train_roles=("user", "assistant"))
    assert "Hi<|im_end|>" in "".join(spans(tok, user_trained))  # configurable roles
