"""The official `openai` Python client against `uberlm serve` (the binary, on loopback, CPU backend,
the tiny chat checkpoint from fixtures_serving.py): chat, completion and streaming, the sampling
parameters, logprobs and echo, and parameters refused by name; and, with the Qwen3.5 chat template
(--chat-template), reasoning_content, tools and chat_template_kwargs. The checkpoint's weights are random,
so what it says is arbitrary: these tests check the API's shape and that streaming gives what the whole
reply gives; tests/chat_server_test.cpp checks the parsing of chosen replies.
Run by CTest: UBERLM_BINARY and UBERLM_SERVING_MODEL name the binary and the checkpoint."""
import os
import pathlib

import openai
import pytest
from tokenizers import Tokenizer
from uberlm_serve import start_serve, stop_serve

MODEL = "tiny"


QWEN3_5_TEMPLATE = pathlib.Path(__file__).resolve().parents[1] / "data" / "chat_templates" / "qwen3_5.jinja"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def start_server(*extra_arguments, max_model_len=512):
    process, url = start_serve("--model", os.environ["UBERLM_SERVING_MODEL"], "--device", "cpu", "--served-model-name",
                               MODEL, "--max-num-seqs", "4", "--max-model-len", str(max_model_len), "--api-key",
                               "sesame", *extra_arguments)
    return process, url + "/v1"


@pytest.fixture(scope="module")
def server():
    process, url = start_server()
    yield url
    stop_serve(process)


@pytest.fixture(scope="module")
def qwen3_5_client():
    # Its tool instructions make prompts of about 600 tokens for this model's small vocabulary.
    process, url = start_server("--chat-template", str(QWEN3_5_TEMPLATE), max_model_len=2048)
    yield openai.OpenAI(base_url=url, api_key="sesame", timeout=30, max_retries=0)
    stop_serve(process)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server, api_key="sesame", timeout=30, max_retries=0)


def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat(client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}],
                                           max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_completion_greedy_is_repeatable_and_stops(client):
    prompt = "Q: Tom has 3 apples and buys 5 more. How many apples?\nA:"
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    assert first.choices[0].text == again.choices[0].text
    assert first.choices[0].finish_reason == "length" and first.usage.completion_tokens == 16
    text = first.choices[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    stopped = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=[stop])
    assert stopped.choices[0].text == text[:text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_streaming_equals_non_streaming(client):
    messages = [{"role": "user", "content": "Count to five."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens

    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True))
    assert streamed == client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10,
                                                 temperature=0).choices[0].text


def test_errors_are_openai_errors(server, client):
    with pytest.raises(openai.BadRequestError, match="must not be empty"):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        client.completions.create(model="gpt-9", prompt="hi", max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server, api_key="wrong", max_retries=0).models.list()


def streamed_reply(chunks):
    """Reasoning, content, tool calls and finish_reason gathered from a chat stream."""
    reasoning, content, calls, finish = [], [], [], None
    for chunk in chunks:
        for choice in chunk.choices:
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            content.append(choice.delta.content or "")
            calls.extend(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    return "".join(reasoning), "".join(content), calls, finish


def test_reasoning_content_streamed_and_whole(qwen3_5_client):
    messages = [{"role": "system", "content": "Think first."}, {"role": "user", "content": "What is 2+2?"}]
    whole = qwen3_5_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    message = whole.choices[0].message
    # The Qwen3.5 template ends the prompt inside <think>: the reply starts as reasoning.
    assert message.reasoning_content
    assert "<think>" not in message.reasoning_content and "</think>" not in message.reasoning_content
    reasoning, content, calls, finish = streamed_reply(qwen3_5_client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=16, temperature=0, stream=True))
    assert reasoning == message.reasoning_content
    assert content == (message.content or "")
    assert calls == [] and finish == whole.choices[0].finish_reason


def test_tools_and_chat_template_kwargs(qwen3_5_client):
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    arguments = dict(model=MODEL, messages=messages, tools=[WEATHER_TOOL], max_tokens=16, temperature=0,
                     extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    whole = qwen3_5_client.chat.completions.create(**arguments)
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    # Thinking off: the template closed the think block in the prompt, so nothing is reasoning.
    assert choice.message.reasoning_content is None
    reasoning, content, calls, finish = streamed_reply(qwen3_5_client.chat.completions.create(**arguments, stream=True))
    assert reasoning == "" and content == (choice.message.content or "")
    assert len(calls) == len(choice.message.tool_calls or []) and finish == choice.finish_reason
    with pytest.raises(openai.BadRequestError, match="constrained decoding"):
        qwen3_5_client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="required",
                                               max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="No user query found"):
        qwen3_5_client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "x"}], max_tokens=4)


def test_sampling_parameters_logprobs_and_echo(client):
    prompt = "Q: Tom has 3 apples and buys 5 more. How many apples?\nA:"
    tokenizer = Tokenizer.from_file(os.path.join(os.environ["UBERLM_SERVING_MODEL"], "tokenizer.json"))
    [a_id] = tokenizer.encode("a", add_special_tokens=False).ids
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    # The client's own types parse the logprobs; a greedy token is the most likely one.
    scored = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert scored.choices[0].text == plain.choices[0].text
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == scored.usage.completion_tokens
    for chosen, top in zip(logprobs.token_logprobs, logprobs.top_logprobs):
        assert len(top) == 2 and chosen == max(top.values())
    echoed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == prompt + plain.choices[0].text
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to five."}],
                                          max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    for entry in chat.choices[0].logprobs.content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == entry.logprob
    # logit_bias (OpenAI's) and min_p / repetition_penalty (vLLM's, through extra_body) are applied.
    a = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logit_bias={str(a_id): 100})
    assert a.usage.completion_tokens == 3 and a.choices[0].text == "aaa"
    assert client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=1, seed=3,
                                     extra_body={"min_p": 1.0}).choices[0].text == plain.choices[0].text
    assert client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logit_bias={str(a_id): 100},
                                     extra_body={"repetition_penalty": 1e6}).choices[0].text != "aaa"


def test_unsupported_parameters_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       response_format={"type": "json_object"})
    assert refused.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=4, extra_body={"guided_json": {}})
    assert refused.value.param == "guided_json"
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=4, logit_bias={"999999": 1})
    assert refused.value.param == "logit_bias"
