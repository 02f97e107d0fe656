"""Chat template oracle: transformers' own renderer (transformers.utils.chat_template_utils, jinja2 as
apply_chat_template configures it) on the real templates of tests/data/chat_templates/ for conversations
with system prompts, several turns, tools, tool calls and results, reasoning, and enable_thinking on and
off; and on small templates that each exercise one Jinja feature. tests/chat_template_test.cpp renders
the same inputs and compares byte for byte.

Writes out/cases.jsonl, one object per line:
  {"suite": "models" | "features", "name", "template" (a file name under tests/data/chat_templates/, or
   the template text for features), "inputs": {"messages", "tools", "add_generation_prompt", "kwargs"},
   "special_tokens", and "expected" (the rendered text) or "error" (the exception's message)}
"""
import json
import pathlib

from transformers.utils.chat_template_utils import render_jinja_template

TEMPLATES = pathlib.Path(__file__).resolve().parents[1] / "data" / "chat_templates"

SPECIAL_TOKENS = {
    "qwen3_5.jinja": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "qwen3.jinja": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    # strftime_now would put today's date in the prompt: the Llama cases fix date_string instead.
    "llama3_2.jinja": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "smollm2.jinja": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city. Returns °C unless told \"fahrenheit\".",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "number"},
                                                         "filters": {"type": "object"}, "safe": {"type": "boolean"}}},
    },
}
TOOLS = [WEATHER_TOOL, SEARCH_TOOL]

SYSTEM = {"role": "system", "content": "You are a helpful assistant.\n"}
USER = {"role": "user", "content": "What is 2+2?"}
ANSWER = {"role": "assistant", "content": "2+2 is 4."}
FOLLOW_UP = {"role": "user", "content": "And 3+3? Answer with “quotes” and émoji 🙂."}

ONE_CALL = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21.5, \"sky\": \"clear\"}"},
]
TWO_CALLS = [
    SYSTEM,
    {"role": "user", "content": "Compare the weather in Paris and Rome, then search for flights."},
    {"role": "assistant", "content": "Let me check both cities.", "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}},
        {"id": "call_b", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Rome", "unit": "fahrenheit"}}}]},
    {"role": "tool", "tool_call_id": "call_a", "content": "sunny, 21"},
    {"role": "tool", "tool_call_id": "call_b", "content": "rain, 60"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_c", "type": "function",
         "function": {"name": "search", "arguments": {"query": "flights Paris → Rome", "limit": 2.5, "safe": True,
                                                      "filters": {"stops": [0, 1], "class": None}}}}]},
    {"role": "tool", "tool_call_id": "call_c", "content": "3 results"},
]
REASONING_HISTORY = [
    USER,
    {"role": "assistant", "content": "4", "reasoning_content": "Two plus two.\nThat is 4."},
    FOLLOW_UP,
    {"role": "assistant", "content": "<think>\nThree plus three.\n</think>\n\n6"},
]

CONVERSATIONS = {
    "one_user_turn": ([USER], None, True, {}),
    "system_and_turns": ([SYSTEM, USER, ANSWER, FOLLOW_UP], None, True, {}),
    "ends_with_assistant": ([SYSTEM, USER, ANSWER], None, False, {}),
    "thinking_off": ([SYSTEM, USER, ANSWER, FOLLOW_UP], None, True, {"enable_thinking": False}),
    "thinking_on": ([USER], None, True, {"enable_thinking": True}),
    "tools_offered": ([SYSTEM, USER], TOOLS, True, {}),
    "tools_no_system_thinking_off": ([USER], TOOLS, True, {"enable_thinking": False}),
    "one_tool_call_and_result": (ONE_CALL, [WEATHER_TOOL], True, {}),
    "two_tool_rounds": (TWO_CALLS, TOOLS, True, {}),
    "reasoning_in_history": (REASONING_HISTORY, None, True, {}),
    "reasoning_in_history_no_prompt": (REASONING_HISTORY, None, False, {"enable_thinking": False}),
    "no_messages": ([], None, True, {}),
    "only_system": ([SYSTEM], None, True, {}),
}

# Small templates, one Jinja feature each, rendered with `context` as the variables.
FEATURES = [
    ("print_values", "{{ none }} {{ true }} {{ 1.0 }} {{ 1e-05 }} {{ 1e16 }} {{ 123456789.125 }} {{ -0.5 }} {{ [1, 'a', \"it's\", none] }} {{ {'k': 'v', 'n': 2} }} {{ undefined_name }}|", {}),
    ("string_filter", "{{ x|string }}|{{ 3|string }}|{{ false|string }}|{{ 0.1|string }}|{{ [true, 2.5]|string }}", {"x": {"b": [1, {"c": None}], "a": "é\n"}}),
    ("tojson", "{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ x|tojson(sort_keys=true) }}|{{ 'é\"\\\\\\n\\t\\x01'|tojson }}|{{ 'é'|tojson(ensure_ascii=true) }}|{{ 2.0|tojson }}|{{ [] | tojson(indent=4) }}", {"x": {"z": 1, "a": [1.5, None, True, "ü"], "m": {}}}),
    ("trim_and_strip", "[{{ '  a b \\n'|trim }}][{{ 'xxaxx'.strip('x') }}][{{ '\\n\\na\\n'.lstrip('\\n') }}][{{ 'a  '.rstrip() }}][{{ '\\u3000a\\u00a0'.strip() }}]", {}),
    ("split", "{{ 'a,b,,c'.split(',') }} {{ '  a  b c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'x</think>y</think>z'.split('</think>')[-1] }} {{ 'a b'.split(maxsplit=0) }}", {}),
    ("starts_ends", "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }} {{ ''.endswith('a') }}", {}),
    ("case_and_replace", "{{ 'Straße'.upper() }} {{ 'ÀB'.lower() }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'x'|upper }} {{ 'Ab'|lower }} {{ 'a-b'|replace('-', '+') }}", {}),
    ("length", "{{ 'héllo🙂'|length }} {{ [1, 2]|length }} {{ {'a': 1}|count }} {{ nothing|length }}", {}),
    ("slices", "{{ s[::-1] }} {{ s[1:] }} {{ s[:-1] }} {{ s[1:4:2] }} {{ s[-2] }} {{ l[::-1] }} {{ l[5:] }} {{ l[-10:1] }} {{ 'añb'[1] }}", {"s": "abcdef", "l": [1, 2, 3]}),
    ("loop_variables", "{% for x in items %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}/{{ loop.nextitem }};{% endfor %}", {"items": ["a", "b", "c"]}),
    ("loop_filter_else_break_continue", "{% for x in items if x > 1 %}{% if x == 3 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{{ loop.length }},{% else %}empty{% endfor %}|{% for x in [] %}x{% else %}none{% endfor %}", {"items": [1, 2, 3, 4, 5, 6]}),
    ("loop_over_dict_and_string", "{% for k in d %}{{ k }}{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d|items %}{{ k }}{% endfor %}|{% for c in 'aé' %}[{{ c }}]{% endfor %}|{{ d.keys()|list }}{{ d.values()|list }}", {"d": {"b": 1, "a": 2}}),
    ("set_scoping", "{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}{% if true %}{% set x = 5 %}{% endif %}{{ x }}", {}),
    ("namespace", "{% set ns = namespace(total=0, seen=none) %}{% for i in [1, 2, 3] %}{% set ns.total = ns.total + i %}{% set ns.seen = i %}{% endfor %}{{ ns.total }} {{ ns.seen }} {{ ns.missing is defined }}", {}),
    ("macros", "{% macro greet(name, greeting='Hello', end=none) %}{{ greeting }}, {{ name }}{{ end if end else '!' }}{% endmacro %}{{ greet('Ann') }}|{{ greet('Bob', 'Hi') }}|{{ greet(name='Cy', end='?') }}|{{ greet('Di')|upper }}|{% set g = greet('Ed')|trim %}{{ g|length }}", {}),
    ("macro_sees_globals", "{% set n = namespace(v=0) %}{% macro bump() %}{% set n.v = n.v + 1 %}{{ top }}{% endmacro %}{% set top = 'T' %}{{ bump() }}{{ bump() }}{{ n.v }}", {}),
    ("tests", "{{ x is defined }}{{ y is defined }}{{ y is undefined }}{{ none is none }}{{ 's' is string }}{{ {} is mapping }}{{ [] is mapping }}{{ 1 is number }}{{ true is number }}{{ 1 is integer }}{{ true is integer }}{{ 1.5 is float }}{{ true is boolean }}{{ false is false }}{{ 0 is false }}{{ true is true }}{{ 's' is sequence }}{{ {} is sequence }}{{ 1 is sequence }}{{ 's' is iterable }}{{ y is iterable }}{{ 1 is iterable }}{{ x is not none }}{{ 1 is eq(1.0) }}{{ 2 is equalto 3 }}", {"x": 1}),
    ("operators", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2.5 }} {{ 'a' ~ 1 ~ none }} {{ 'ab' * 2 }} {{ [1] + [2] }} {{ -x }} {{ 3 - 1 - 1 }} {{ 2 + 3 * 4 }} {{ (2 + 3) * 4 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 3 ** 0 }} {{ 2 ** -1 }} {{ 7 % -3 }} {{ -7 // -1 }} {{ 'a' * -1 }} {{ 1e999 }}", {"x": 4}),
    ("comparisons_and_logic", "{{ 1 == 1.0 }}{{ true == 1 }}{{ 'a' < 'b' }}{{ 2 >= 3 }}{{ 'b' in 'abc' }}{{ 'k' in {'k': 1} }}{{ 2 in [1, 2] }}{{ 3 not in [1, 2] }}{{ not 'x' in 'y' }}{{ [] or 'fallback' }}{{ 'a' and 'b' }}{{ 0 and 1 }}{{ none or 0 }}{{ {'a': 1, 'b': 2} == {'b': 2, 'a': 1} }}{{ y == undefined2 }}{{ 'x' in y }}", {}),
    ("conditional_expression", "{{ 'yes' if x else 'no' }}|{{ 'only' if not x }}|{{ 'a' if x else 'b' if y else 'c' }}|{{ x|string if x is mapping else 'plain' }}", {"x": 0, "y": 1}),
    ("filters_misc", "{{ [1, 2, 3]|join(', ') }}|{{ 'abc'|join('-') }}|{{ [1, 2]|first }}{{ [1, 2]|last }}{{ 'xyz'|first }}|{{ 'ab'|list }}|{{ missing|default('d') }}|{{ ''|default('e', true) }}|{{ ''|default('e') }}|{{ x|d('f') }}|{{ 'x'|safe }}", {"x": 0}),
    ("dict_methods", "{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 9) }} {{ d['a'] }} {{ d.a }} {{ d.missing is defined }} {{ d['a']['b'] if d['a'] is mapping else d['nested']['b'] }}", {"d": {"a": 1, "nested": {"b": "deep"}}}),
    ("string_escapes", "{{ 'tab\\there' }}|{{ \"dq \\\"q\\\" \\u00e9 \\x41 \\101 \\U0001F642\" }}|{{ 'keep \\q' }}|{{ 'a' 'b' }}", {}),
    ("whitespace_control", "a  {%- if true -%}  b  {%- endif -%}  c\n  {% if true %}\n    d\n  {% endif %}\n{# comment #}\n  {#- note -#}  e\n{%+ if true %}f{% endif %}\n{{ 'g' }}\n  {{- 'h' -}}  \ni\n", {}),
    ("lstrip_needs_line_start", "x {% if true %}y{% endif %}\n   {% if true %}z{% endif %}\n", {}),
    ("raw_newlines_in_literals", "{{ 'line1\nline2' }}\r\n{% if true %}\r\nafter crlf\r\n{% endif %}", {}),
    ("generation_block", "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
     {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
    ("raise_exception", "{% if x %}{{ raise_exception('x must be false, got ' ~ x) }}{% endif %}ok", {"x": 1}),
    ("undefined_attribute_is_error", "{{ missing.attribute }}", {}),
    ("items_of_a_string_is_error", "{% for k, v in 'abc'|items %}{{ k }}{% endfor %}", {}),
    ("concat_with_undefined_is_error", "{{ 'a' + missing }}", {}),
    ("none_attribute_is_undefined", "{{ x.a is defined }}{{ 'str'.a is defined }}", {"x": None}),
]


def render(template: str, inputs: dict, special_tokens: dict) -> dict:
    try:
        rendered, _ = render_jinja_template(conversations=[inputs["messages"]], tools=inputs["tools"],
                                            chat_template=template,
                                            add_generation_prompt=inputs["add_generation_prompt"],
                                            **special_tokens, **inputs["kwargs"])
        return {"expected": rendered[0]}
    except Exception as error:  # noqa: BLE001 - any failure of the oracle is a case of its own
        return {"error": f"{type(error).__name__}: {error}"}


def make(out: pathlib.Path) -> None:
    with open(out / "cases.jsonl", "w", encoding="utf-8") as cases:
        for template_file, special_tokens in SPECIAL_TOKENS.items():
            template = (TEMPLATES / template_file).read_text(encoding="utf-8")
            for name, (messages, tools, add_generation_prompt, kwargs) in CONVERSATIONS.items():
                if template_file == "llama3_2.jinja":
                    kwargs = {**kwargs, "date_string": "26 Jul 2024"}
                inputs = {"messages": messages, "tools": tools, "add_generation_prompt": add_generation_prompt,
                          "kwargs": kwargs}
                case = {"suite": "models", "name": f"{template_file}/{name}", "template": template_file,
                        "inputs": inputs, "special_tokens": special_tokens, **render(template, inputs, special_tokens)}
                cases.write(json.dumps(case, ensure_ascii=False) + "\n")
        for name, template, context in FEATURES:
            # The feature templates read their variables from kwargs; messages is left empty.
            inputs = {"messages": context.pop("messages", []), "tools": None, "add_generation_prompt": False,
                      "kwargs": context}
            case = {"suite": "features", "name": name, "template": template, "inputs": inputs, "special_tokens": {},
                    **render(template, inputs, {})}
            cases.write(json.dumps(case, ensure_ascii=False) + "\n")
