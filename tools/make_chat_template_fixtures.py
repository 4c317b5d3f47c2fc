#!/usr/bin/env python3
"""Reference renderings of real chat templates for tests/train/test_chat_template.cpp.

Renders each template with transformers' own chat-template machinery
(transformers.utils.chat_template_utils.render_jinja_template, which is what
PreTrainedTokenizerBase.apply_chat_template calls: the jinja2 ImmutableSandboxedEnvironment
with trim_blocks, lstrip_blocks, loopcontrols, raise_exception, tojson, namespace) on a set
of conversations, and writes one JSON file per template to tests/fixtures/chat_templates/:

  {"name", "source", "template", "bos_token", "eos_token",
   "cases": [{"name", "messages", "add_generation_prompt", "extra", "expected" | "error"}]}

`error` holds the message of the jinja2 TemplateError (raise_exception) when rendering fails.

Where the templates come from (no hub access while this was written):
  smollm2   : tokenizer.chat_template of models/SmolLM2-135M-Instruct.Q4_1.gguf
  llama3    : llama_cpp/llama_chat_format.py LLAMA3_INSTRUCT_CHAT_TEMPLATE (copied there from
              meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json)
  mistral   : llama_cpp/llama_chat_format.py MISTRAL_INSTRUCT_CHAT_TEMPLATE (Mistral-7B-Instruct-v0.1)
  mixtral   : llama_cpp/llama_chat_format.py MIXTRAL_INSTRUCT_CHAT_TEMPLATE
  llama2, qwen2, qwen2_5, gemma, phi3 : written out from memory of the public
              tokenizer_config.json files (may differ from the hub in details; the reference
              output is still transformers' rendering of exactly this string).
  gemma4    : tools/chat_templates/gemma4.jinja, Gemma 4's template as llama.cpp keeps it
              (ggml-org/llama.cpp models/templates/gemma4.jinja)
  llama4    : transformers' models/llama4/processing_llama4.py chat_template (Llama 4 Scout /
              Maverick's, as the processor carries it)
  lfm2      : tools/chat_templates/lfm2.jinja, LFM2's template as llama.cpp keeps it
              (ggml-org/llama.cpp models/templates/llama-cpp-lfm2.jinja: tool lists, JSON tool
              calls, tool responses)
  lfm2_5    : tools/chat_templates/lfm2_5.jinja, LFM2.5-8B-A1B's as llama.cpp keeps it
              (models/templates/LFM2.5-8B-A1B.jinja: {% generation %}, macros, Pythonic tool
              calls, thinking kept after the last user turn; no `tools` case: it prints
              strftime_now's date)
  granite4  : tools/chat_templates/granite4.jinja, Granite 4.0's as llama.cpp keeps it
              (models/templates/ibm-granite-granite-4.0.jinja: tools, RAG documents, tool
              calls and responses, content parts)
  features  : a synthetic template exercising the rest of the supported Jinja subset.

Usage: .refenv/bin/python tools/make_chat_template_fixtures.py [--out DIR]
"""
import argparse
import json
import os
import sys

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smollm2_template():
    import gguf
    r = gguf.GGUFReader(os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def llama4_template():
    from transformers.models.llama4 import processing_llama4
    return processing_llama4.chat_template


def llama_cpp_template(name):
    from llama_cpp import llama_chat_format
    return getattr(llama_chat_format, name)


LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN2_5 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3_1 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Qwen3's chat template (Qwen/Qwen3-0.6B tokenizer_config.json, as published, reasoning-aware:
# <think> blocks after the last user query, enable_thinking).
QWEN3 = '{%- if tools %}\n    {{- \'<|im_start|>system\\n\' }}\n    {%- if messages[0].role == \'system\' %}\n        {{- messages[0].content + \'\\n\\n\' }}\n    {%- endif %}\n    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n    {%- for tool in tools %}\n        {{- "\\n" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n{%- else %}\n    {%- if messages[0].role == \'system\' %}\n        {{- \'<|im_start|>system\\n\' + messages[0].content + \'<|im_end|>\\n\' }}\n    {%- endif %}\n{%- endif %}\n{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n{%- for message in messages[::-1] %}\n    {%- set index = (messages|length - 1) - loop.index0 %}\n    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith(\'<tool_response>\') and message.content.endswith(\'</tool_response>\')) %}\n        {%- set ns.multi_step_tool = false %}\n        {%- set ns.last_query_index = index %}\n    {%- endif %}\n{%- endfor %}\n{%- for message in messages %}\n    {%- if message.content is string %}\n        {%- set content = message.content %}\n    {%- else %}\n        {%- set content = \'\' %}\n    {%- endif %}\n    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}\n        {{- \'<|im_start|>\' + message.role + \'\\n\' + content + \'<|im_end|>\' + \'\\n\' }}\n    {%- elif message.role == "assistant" %}\n        {%- set reasoning_content = \'\' %}\n        {%- if message.reasoning_content is string %}\n            {%- set reasoning_content = message.reasoning_content %}\n        {%- else %}\n            {%- if \'</think>\' in content %}\n                {%- set reasoning_content = content.split(\'</think>\')[0].rstrip(\'\\n\').split(\'<think>\')[-1].lstrip(\'\\n\') %}\n                {%- set content = content.split(\'</think>\')[-1].lstrip(\'\\n\') %}\n            {%- endif %}\n        {%- endif %}\n        {%- if loop.index0 > ns.last_query_index %}\n            {%- if loop.last or (not loop.last and reasoning_content) %}\n                {{- \'<|im_start|>\' + message.role + \'\\n<think>\\n\' + reasoning_content.strip(\'\\n\') + \'\\n</think>\\n\\n\' + content.lstrip(\'\\n\') }}\n            {%- else %}\n                {{- \'<|im_start|>\' + message.role + \'\\n\' + content }}\n            {%- endif %}\n        {%- else %}\n            {{- \'<|im_start|>\' + message.role + \'\\n\' + content }}\n        {%- endif %}\n        {%- if message.tool_calls %}\n            {%- for tool_call in message.tool_calls %}\n                {%- if (loop.first and content) or (not loop.first) %}\n                    {{- \'\\n\' }}\n                {%- endif %}\n                {%- if tool_call.function %}\n                    {%- set tool_call = tool_call.function %}\n                {%- endif %}\n                {{- \'<tool_call>\\n{"name": "\' }}\n                {{- tool_call.name }}\n                {{- \'", "arguments": \' }}\n                {%- if tool_call.arguments is string %}\n                    {{- tool_call.arguments }}\n                {%- else %}\n                    {{- tool_call.arguments | tojson }}\n                {%- endif %}\n                {{- \'}\\n</tool_call>\' }}\n            {%- endfor %}\n        {%- endif %}\n        {{- \'<|im_end|>\\n\' }}\n    {%- elif message.role == "tool" %}\n        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}\n            {{- \'<|im_start|>user\' }}\n        {%- endif %}\n        {{- \'\\n<tool_response>\\n\' }}\n        {{- content }}\n        {{- \'\\n</tool_response>\' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n            {{- \'<|im_end|>\\n\' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- \'<|im_start|>assistant\\n\' }}\n    {%- if enable_thinking is defined and enable_thinking is false %}\n        {{- \'<think>\\n\\n</think>\\n\\n\' }}\n    {%- endif %}\n{%- endif %}'

THINKING_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "reasoning_content": "Add again.", "content": "6"},
]

# Gemma 3's chat template (google/gemma-3-* tokenizer_config.json): the system turn becomes
# the first user turn's prefix; content may be a list of typed parts.
GEMMA3 = '{{ bos_token }}\n{%- if messages[0][\'role\'] == \'system\' -%}\n    {%- if messages[0][\'content\'] is string -%}\n        {%- set first_user_prefix = messages[0][\'content\'] + \'\n\n\' -%}\n    {%- else -%}\n        {%- set first_user_prefix = messages[0][\'content\'][0][\'text\'] + \'\n\n\' -%}\n    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = "" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message[\'role\'] == \'user\') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n    {%- endif -%}\n    {%- if (message[\'role\'] == \'assistant\') -%}\n        {%- set role = "model" -%}\n    {%- else -%}\n        {%- set role = message[\'role\'] -%}\n    {%- endif -%}\n    {{ \'<start_of_turn>\' + role + \'\n\' + (first_user_prefix if loop.first else "") }}\n    {%- if message[\'content\'] is string -%}\n        {{ message[\'content\'] | trim }}\n    {%- elif message[\'content\'] is iterable -%}\n        {%- for item in message[\'content\'] -%}\n            {%- if item[\'type\'] == \'image\' -%}\n                {{ \'<start_of_image>\' }}\n            {%- elif item[\'type\'] == \'text\' -%}\n                {{ item[\'text\'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n        {{ raise_exception("Invalid content type") }}\n    {%- endif -%}\n    {{ \'<end_of_turn>\n\' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{\'<start_of_turn>model\n\'}}\n{%- endif -%}'

PARTS_CONVERSATION = [
    {"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  What is this? "}]},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": "Sure?"},
]

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Synthetic: everything in the supported subset that the real templates above do not use.
FEATURES = """{#- a comment -#}
{%- macro turn(role, text, sep='\\n') -%}
<{{ role | upper }}>{{ sep }}{{ text | trim }}</{{ role|lower }}>
{%- endmacro -%}
{%- set ns = namespace(count=0, roles=[]) -%}
{%- for m in messages -%}
  {%- set ns.count = ns.count + 1 -%}
  {%- if m.role not in ns.roles %}{% set ns.roles = ns.roles + [m.role] %}{% endif -%}
  {{ turn(m['role'], m.content) }}
  [{{ loop.index }}/{{ loop.length }}{{ ' first' if loop.first }}{{ ' last' if loop.last else '' }}]
  {% if m.content is string and m.content.strip().startswith('Hello') %}greeting{% elif m.content.endswith('?') %}question{% else %}other{% endif %}
  words={{ m.content.split() | length }} rev={{ m.role[::-1] }} tail={{ m.role[1:] }} mid={{ m.content[2:5] }}
{% endfor -%}
roles: {{ ns.roles | join(', ') }} ({{ ns.count }})
{% for k, v in {'a': 1, 'b': [1, 2], 'c': none, 'd': true}.items() %}{{ k }}={{ v | tojson }}{{ ';' if not loop.last }}{% endfor %}

{% for k, v in extra_info | items %}{{ k }}:{{ v }} {% endfor %}

{{ {'x': 'é"\\\\', 'n': [1, 2.5, -3], 'f': false} | tojson }} {{ 'abc' | tojson }}
{{ 7 // 2 }} {{ 7 % 3 }} {{ 7 / 2 }} {{ 2 * 3 + 1 }} {{ -4 + 10 }} {{ 1.5 * 2 }} {{ 10 - 3 - 2 }}
{{ 'x' ~ 1 ~ none ~ true }} {{ 'a' + 'b' }} {{ 'ab' * 3 }} {{ [1, 2] + [3] }}
{{ 'hello world' | capitalize }} {{ 'a-b-c' | replace('-', '+') }} {{ [3, 4, 5] | first }} {{ [3, 4, 5] | last }} {{ 'xyz' | first }}
{{ undefined_var | default('dflt') }} {{ '' | default('empty', true) }} {{ 42 | string }} {{ '17' | int + 1 }} {{ 3.9 | int }}
{{ extra_info.get('lang') }} {{ extra_info.get('missing', 'none-here') }} {{ extra_info['lang'] | length }}
{{ 'HeLLo'.lower() }} {{ 'HeLLo'.upper() }} {{ '  pad  '.strip() }}|{{ 'a,b,,c'.split(',') }} {{ 'xxhixx'.strip('x') }}
{{ 1 in [1, 2] }} {{ 'b' in 'abc' }} {{ 'k' in {'k': 1} }} {{ 3 not in [1, 2] }} {{ not false and (true or false) }}
{{ 1 < 2 <= 2 }} {{ 'a' == 'a' }} {{ 1 != 1.0 }} {{ 2 > 3 }} {{ [1] == [1] }}
{{ none is none }} {{ x is defined }} {{ x is undefined }} {{ 'a' is string }} {{ 1 is number }} {{ [1] is iterable }} {{ {} is mapping }} {{ 4 is even }} {{ 3 is odd }} {{ 3 is divisibleby 3 }}
{{ true if none else false }} {{ none }} {{ true }} {{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e3 }} {{ [1, 'a', none, true, {'k': 'v'}] }} {{ {'a': 'b'} }}
{% for i in range(3) %}{{ i }}{% if i == 1 %}{% break %}{% endif %}{% endfor %} {% for i in range(1, 6, 2) %}{% if i == 3 %}{% continue %}{% endif %}{{ i }}{% endfor %}
{% for x in [] %}never{% else %}empty-loop{% endfor %} {% for x in [1, 2, 3] if x != 2 %}{{ x }}{{ loop.index0 }}{% endfor %}
{% set a, b = 1, 2 %}{{ a }}{{ b }} {% set lst = [5, 3, 4] %}{{ lst | sort | list }} {{ lst | max }} {{ lst | min }} {{ lst | sum }} {{ lst | reverse | list }}
{% set s %}captured {{ 1 + 1 }}{% endset %}{{ s }} {{ 'abc'[1] }} {{ [1, 2, 3][-1] }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | map(attribute='role') | join('/') }}
{{ messages[1] | tojson if messages | length > 1 }} {{ messages[-1] | tojson }}
{%- if add_generation_prompt %}
<gen>
{%- endif %}
"""


CONVERSATIONS = {
    "system_multi_turn": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Hello! What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ],
    "no_system": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ],
    "single_user": [
        {"role": "user", "content": "Write a haiku about autumn."},
    ],
    "whitespace_unicode": [
        {"role": "user", "content": "  \n  Héllo wörld — ünïcode ☃ 你好  \n"},
        {"role": "assistant", "content": "\tsure:  \"quoted\" & <tags> \\ backslash\n\n"},
        {"role": "user", "content": "multi\nline\n\ntext "},
    ],
    "bad_role_order": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
    ],
    "reasoning_fields": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "thinking": "t0", "content": "4", "reasoning_content": "add them"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6", "reasoning": "add again", "reasoning_content": None},
    ],
    "system_only_then_user": [
        {"role": "system", "content": "  Be nice.  "},
        {"role": "user", "content": "ok"},
    ],
}

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                        "unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["city"]}}},
]

SINGLE_TOOL_CONVERSATION = [
    {"role": "system", "content": "Answer with tools when useful."},
    {"role": "user", "content": "  Weather in Oslo?  "},
    {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}}]},
    {"role": "tool", "name": "get_weather", "content": "-3C snow"},
    {"role": "assistant", "content": "It is -3C and snowing in Oslo."},
]

# Gemma 4's own tool turns: calls on the model's turn, results as the next message's
# tool_responses (its template's form), a thought channel in the model's answer that the
# template strips from history.
GEMMA4_TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
    {"role": "tool", "content": "", "tool_responses": [{"name": "get_weather", "response": {"temp": 18, "sky": "sunny"}},
                                                       {"name": "get_weather", "response": "no wind"}]},
    {"role": "assistant", "content": "<|channel>thought\nIt is warm.<channel|>It is 18C and sunny in Paris."},
]
GEMMA4_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_templates", "gemma4.jinja")
LFM2_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_templates", "lfm2.jinja")
# Granite 4.0's RAG documents (the template's `documents`: each written as JSON into the system turn).
GRANITE_DOCUMENTS = [{"doc_id": 1, "title": "Tides", "text": "Tides rise twice a day.\nThe moon pulls the sea."},
                     {"doc_id": "b", "title": "Ünïcode \"quotes\"", "text": "Line 1\tx <tag> & 'q'"}]
GRANITE4_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_templates", "granite4.jinja")
LFM2_5_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_templates", "lfm2_5.jinja")

# LFM2.5's thinking field: kept on the assistant turns after the last user turn.
LFM2_5_THINKING_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "thinking": "Add them.", "content": "<think>Add them.</think>\n4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "thinking": "Add again.", "content": "6"},
]

BUILTIN_TOOL_CONVERSATION = [
    {"role": "user", "content": "Search the news about qlora"},
    {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "brave_search", "arguments": {"query": "qlora news", "count": "3"}}}]},
    {"role": "ipython", "content": {"results": ["a", "b"]}},
]

TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris and Zürich?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
    {"role": "tool", "name": "get_weather", "content": "18C sunny"},
    {"role": "tool", "name": "get_weather", "content": "12C rain"},
    {"role": "assistant", "content": "Paris: 18C sunny; Zürich: 12C rain."},
]


# Small templates for corner cases, rendered in the same jinja2 environment (context as given).
# "error" is recorded when jinja2 raises; the C++ side must then throw qlora::Error.
SNIPPETS = [
    ("  {% if true %}\n    x\n  {% endif %}\n", {}),
    ("{%- for i in range(3) -%}\n {{ i }} \n{%- endfor -%}", {}),
    ("a\n{# c #}\nb", {}),
    ("a\n  {# c #}\nb", {}),
    ("a {# c #} b\n", {}),
    ("{% if true %}  \n{% endif %}x", {}),
    ("x {%+ if true %}y{% endif %}", {}),
    ("{{ 'a' }}  \n  {{ 'b' }}", {}),
    ("{% if 1 %}\r\nA\r\n{% endif %}\r\n", {}),
    ("{% for x in 'abc' %}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.previtem }}{{ loop.nextitem }}|{% endfor %}", {}),
    ("{% for x in [] %}a{% else %}b{% endfor %}{% for x in [1] if x > 5 %}a{% else %}c{% endfor %}", {}),
    ("{{ '\\u00e9\\x41\\t|\\q' }} {{ \"a\" 'b' }}", {}),
    ("{{ 10 / 4 }} {{ 10 // 4 }} {{ -10 // 4 }} {{ 10 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}", {}),
    ("{{ 1 + 2 * 3 - 4 / 2 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ not 1 == 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}", {}),
    ("{{ [1,2,3] | join }} {{ [1,2,3] | join('-') }} {{ 'abc' | list }} {{ {'a': 1} | list }}", {}),
    ("{{ 'hello wORLD-foo.bar (x)' | title }} {{ 'hELLO' | capitalize }} {{ '  x  ' | trim }}|{{ 'xxaxx' | trim('x') }}", {}),
    ("{{ 'a b  c'.split(' ') }} {{ '  a b '.split() }} {{ 'a,b,c'.split(',', 1) }} {{ ''.split() }} {{ ''.split(',') }}", {}),
    ("{{ ' x '.lstrip() }}|{{ ' x '.rstrip() }}|{{ 'abc'.startswith(('x', 'a')) }} {{ 'abc'.endswith('bc') }}", {}),
    ("{{ none | default('d') }} {{ undefined_thing | default('d') }} {{ [] | first }}|{{ 'abc' | last }} {{ none }}", {}),
    ("{{ [3, 1, 2] | sort(reverse=true) }} {{ ['b', 'A', 'c'] | sort }} {{ ['b', 'A', 'c'] | sort(case_sensitive=true) }}", {}),
    ("{{ [{'n': 2}, {'n': 1}] | sort(attribute='n') | map(attribute='n') | list }} {{ ['B', 'a'] | max }} {{ [] | max }}", {}),
    ("{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3, 4] | reject('even') | list }} {{ [0, 1, '', 'a'] | select | list }}", {}),
    ("{{ range(3) | list }} {{ range(1, 10, 3) | list }} {{ range(5, 0, -2) | list }}", {}),
    ("{{ x is not none }} {{ 1 if x else 2 }}|{{ 'yes' if true }}|{{ 'a' if false else 'b' if false else 'c' }}", {"x": None}),
    ("{% set a = [1] %}{% set b = a + [2] %}{{ a }}{{ b }} {% set t = (1, 'a') %}{{ t }} {{ (1,) }} {{ () }}", {}),
    ("{{ d.items() | list }} {{ d | items | list }} {{ d | length }} {{ 'a' in d }} {{ d.keys() | list }} {{ d.values() | list }}", {"d": {"a": 1, "b": [1, {"c": None}]}}),
    ("{{ d }} {{ d | tojson }} {{ '\\n\"\\\\' | tojson }} {{ [1.5, 1e100, -0.0] | tojson }}", {"d": {"a": 1, "b": [True, {"c": "x'y"}]}}),
    ("{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 5) }} {{ d['a'] }} {{ d.a }} {{ d.zz is defined }} {{ l[5] is defined }}", {"d": {"a": 1}, "l": [1]}),
    ("{{ 'abc'[-1] }} {{ 'abcdef'[::2] }} {{ 'abcdef'[-2:] }} {{ [1, 2, 3, 4][1:-1] }} {{ [1, 2, 3][5:] }} {{ 'abc'[10:1:-1] }} {{ [1,2,3,4,5][::-2] }}", {}),
    ("{{ 'x' ~ 1 ~ 2.5 ~ none ~ [1] }} {{ 'ab' * 2 }} {{ [0] * 3 }} {{ 3 * 'x' }}", {}),
    ("{{ 'A-B' | lower | replace('-', '_') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ 'ab' | replace('', '.') }} {{ 'x' | upper }}", {}),
    ("{{ 42 | string | length }} {{ '3' | int * 2 }} {{ 'x' | int }} {{ '2.7' | int }} {{ '2.5' | float }} {{ 'q' | float }} {{ 3 | float }} {{ true | int }}", {}),
    ("{{ 'ÀÉÎõüÿ ĀāŁł ΑΒΓαβγάΣς АБВабвЁё Straße µ' | upper }} {{ 'ÀÉÎõüÿ ĀāŁł ΑΒΓαβγΆ АБВабвЁё' | lower }} {{ 'élan vital' | capitalize }} {{ 'élan-vital' | title }}", {}),
    ("{{ [1, [2, 3]] | length }} {{ 'héllo' | length }} {{ 'héllo' | upper }} {{ 'héllo' | reverse }} {{ [1, 2] | reverse | list }}", {}),
    ("{{ [1, 2, 3] | sum }} {{ [{'a': 2}, {'a': 3}] | sum(attribute='a') }} {{ [1, 2, 1] | unique | list }} {{ -3 | abs }} {{ 2.567 | round(2) }}", {}),
    ("{{ 1 is number }} {{ 1.0 is integer }} {{ 1 is float }} {{ true is boolean }} {{ 's' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 1 is iterable }} {{ none is none }} {{ 2 is even }} {{ 9 is divisibleby 3 }} {{ 'a' is lower }} {{ 1 is eq 1 }} {{ 2 is gt 1 }} {{ 1 is in [1] }}", {}),
    ("{% macro m(a, b='x') %}[{{ a }}{{ b }}{{ c }}]{% endmacro %}{% set c = 'C' %}{{ m(1) }}{{ m(a=2, b=3) }}{{ m('q') | upper }}", {}),
    ("{% set ns = namespace(items=[], n=0) %}{% for x in [1, 2, 3] %}{% set ns.items = ns.items + [x * 2] %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.items }} {{ ns.n }}", {}),
    ("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %} {% for i in range(10) %}{% if i > 2 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("{% set x = 'outer' %}{% for i in [1] %}{% set x = 'inner' %}{{ x }}{% endfor %} {{ x }} {% if true %}{% set x = 'if' %}{% endif %}{{ x }}", {}),
    ("{% set s %}a{{ 1 }}b{% endset %}{{ s | upper }} {% filter upper %}low{{ 'er' }}{% endfilter %}", {}),
    ("{{ 'The %s' }} {{ '{x}' }} {{ 'a\tb' }} {{ \"it's\" }} {{ [\"it's\", 'x\"y', 'a\\\\b'] }}", {}),
    ("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }} {{ messages | rejectattr('role', 'eq', 'user') | list | length }} {{ messages | map(attribute='nope', default='-') | join }}", {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}, {"role": "user", "content": "c"}]}),
    ("{{ (messages | first).role }} {{ messages[-1]['content'] }} {{ messages | last | attr }}", {"messages": [{"role": "user", "content": "a"}]}),
    ("{{ 'a' + 1 }}", {}),
    ("{{ missing.attr }}", {}),
    ("{{ raise_exception('custom failure') }}", {}),
    ("{{ 1 / 0 }}", {}),
    ("{{ [1].append(2) }}", {}),
    ("{% for x in 5 %}{% endfor %}", {}),
    ("{{ 'x' | nosuchfilter }}", {}),
    ("{% if %}{% endif %}", {}),
    ("{{ tojson }}", {}),
    ("{{ 'abc' | indent(2) }}|{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}", {}),
    ("{{ x | tojson(indent=2) }}", {"x": {"a": [1, {"b": []}], "c": {}}}),
    ("{% generation %}gen{{ 1 }}{% endgeneration %}", {}),
    ("{{ d | dictsort }} {{ d | dictsort(true) }} {{ d | dictsort(by='value', reverse=true) }}{% for k, v in d | dictsort %}|{{ k }}={{ v }}{% endfor %}",
     {"d": {"b": 1, "A": 3, "a": 0, "C": 2}}),
    ("{{ d | dictsort(by='nope') }}", {"d": {"a": 1}}),
]


def render_snippets():
    from transformers.utils.chat_template_utils import _compile_jinja_template
    out = []
    for tmpl, ctx in SNIPPETS:
        case = {"template": tmpl, "context": ctx}
        try:
            case["expected"] = _compile_jinja_template(tmpl).render(**ctx)
        except Exception as e:
            case["error"] = f"{type(e).__name__}: {e}"
        out.append(case)
    return out


def render(template, messages, agp, bos, eos, extra):
    try:
        out, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                       add_generation_prompt=agp, bos_token=bos, eos_token=eos, **extra)
        return {"expected": out[0]}
    except Exception as e:  # jinja2.TemplateError from raise_exception
        return {"error": str(e)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "chat_templates"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    templates = [
        ("smollm2", smollm2_template(), "gguf models/SmolLM2-135M-Instruct.Q4_1.gguf", "<|im_start|>", "<|im_end|>"),
        ("llama2", LLAMA2, "from memory (meta-llama/Llama-2-7b-chat-hf)", "<s>", "</s>"),
        ("llama3", llama_cpp_template("LLAMA3_INSTRUCT_CHAT_TEMPLATE"), "llama_cpp.llama_chat_format",
         "<|begin_of_text|>", "<|eot_id|>"),
        ("mistral", llama_cpp_template("MISTRAL_INSTRUCT_CHAT_TEMPLATE"), "llama_cpp.llama_chat_format", "<s>", "</s>"),
        ("mixtral", llama_cpp_template("MIXTRAL_INSTRUCT_CHAT_TEMPLATE"), "llama_cpp.llama_chat_format", "<s>", "</s>"),
        ("qwen2", QWEN2, "from memory (Qwen/Qwen2-7B-Instruct)", None, "<|im_end|>"),
        ("qwen2_5", QWEN2_5, "from memory (Qwen/Qwen2.5-7B-Instruct)", None, "<|im_end|>"),
        ("llama3_1", LLAMA3_1, "from memory (meta-llama/Llama-3.1-8B-Instruct)", "<|begin_of_text|>", "<|eot_id|>"),
        ("gemma", GEMMA, "from memory (google/gemma-7b-it)", "<bos>", "<eos>"),
        ("phi3", PHI3, "from memory (microsoft/Phi-3-mini-4k-instruct)", "<s>", "<|endoftext|>"),
        ("qwen3", QWEN3, "Qwen/Qwen3-0.6B tokenizer_config.json", None, "<|im_end|>"),
        ("gemma3", GEMMA3, "google/gemma-3 tokenizer_config.json", "<bos>", "<eos>"),
        ("gemma4", open(GEMMA4_TEMPLATE, encoding="utf-8").read(),
         "Gemma 4's chat template as llama.cpp keeps it (models/templates/gemma4.jinja): tools/chat_templates/gemma4.jinja",
         "<bos>", "<eos>"),
        ("llama4", llama4_template(), "transformers models/llama4/processing_llama4.py chat_template",
         "<|begin_of_text|>", "<|eot|>"),
        ("lfm2", open(LFM2_TEMPLATE, encoding="utf-8").read(),
         "LFM2's chat template as llama.cpp keeps it (models/templates/llama-cpp-lfm2.jinja): tools/chat_templates/lfm2.jinja",
         "<|startoftext|>", "<|im_end|>"),
        ("lfm2_5", open(LFM2_5_TEMPLATE, encoding="utf-8").read(),
         "LFM2.5-8B-A1B's chat template as llama.cpp keeps it (models/templates/LFM2.5-8B-A1B.jinja): "
         "tools/chat_templates/lfm2_5.jinja", "<|startoftext|>", "<|im_end|>"),
        ("granite4", open(GRANITE4_TEMPLATE, encoding="utf-8").read(),
         "Granite 4.0's chat template as llama.cpp keeps it (models/templates/ibm-granite-granite-4.0.jinja): "
         "tools/chat_templates/granite4.jinja", None, "<|end_of_text|>"),
        ("features", FEATURES, "synthetic", "<s>", "</s>"),
    ]
    for name, tmpl, source, bos, eos in templates:
        cases = []
        # (conversation, extra template variables)
        convs = {k: (v, {}) for k, v in CONVERSATIONS.items()}
        if name == "qwen2_5":
            convs["tools"] = (TOOL_CONVERSATION, {"tools": TOOLS})
            convs["single_tool"] = (SINGLE_TOOL_CONVERSATION, {"tools": TOOLS})
        if name == "gemma3":
            convs["content_parts"] = (PARTS_CONVERSATION, {})
        if name == "gemma4":
            convs["content_parts"] = (PARTS_CONVERSATION, {})
            convs["tools"] = (GEMMA4_TOOL_CONVERSATION, {"tools": TOOLS})
            convs["thinking"] = (CONVERSATIONS[next(iter(CONVERSATIONS))], {"enable_thinking": True})
        if name == "llama4":
            convs["content_parts"] = (PARTS_CONVERSATION, {})
            convs["single_tool"] = (SINGLE_TOOL_CONVERSATION, {"tools": TOOLS})
            convs["single_tool_in_system"] = (SINGLE_TOOL_CONVERSATION, {"tools": TOOLS, "tools_in_user_message": False})
            convs["tool_results"] = (BUILTIN_TOOL_CONVERSATION, {})
        if name == "lfm2":
            convs["tools"] = (TOOL_CONVERSATION, {"tools": TOOLS})
            convs["single_tool"] = (SINGLE_TOOL_CONVERSATION, {"tools": TOOLS})
        if name == "granite4":
            convs["content_parts"] = (PARTS_CONVERSATION, {})
            convs["tools"] = (TOOL_CONVERSATION, {"tools": TOOLS})
            convs["single_tool"] = (SINGLE_TOOL_CONVERSATION, {"tools": TOOLS})
            convs["available_tools"] = (SINGLE_TOOL_CONVERSATION, {"available_tools": TOOLS})
            convs["documents"] = (CONVERSATIONS[next(iter(CONVERSATIONS))], {"documents": GRANITE_DOCUMENTS})
            convs["tools_and_documents"] = (SINGLE_TOOL_CONVERSATION, {"tools": TOOLS, "documents": GRANITE_DOCUMENTS})
        if name == "lfm2_5":
            convs["content_parts"] = (PARTS_CONVERSATION, {})
            convs["tool_calls"] = (TOOL_CONVERSATION, {})
            convs["single_tool_call"] = (SINGLE_TOOL_CONVERSATION, {})
            convs["thinking"] = (LFM2_5_THINKING_CONVERSATION, {})
            convs["thinking_preserved"] = (LFM2_5_THINKING_CONVERSATION, {"preserve_thinking": True})
        if name == "qwen3":
            convs["tools"] = (TOOL_CONVERSATION, {"tools": TOOLS})
            convs["thinking"] = (THINKING_CONVERSATION, {})
            convs["no_thinking"] = (CONVERSATIONS[next(iter(CONVERSATIONS))], {"enable_thinking": False})
        if name == "llama3_1":
            convs["tools_two_calls"] = (TOOL_CONVERSATION, {"tools": TOOLS})
            convs["single_tool"] = (SINGLE_TOOL_CONVERSATION, {"tools": TOOLS})
            convs["single_tool_in_system"] = (SINGLE_TOOL_CONVERSATION,
                                              {"tools": TOOLS, "tools_in_user_message": False,
                                               "date_string": "01 Jan 2026"})
            convs["builtin_tools"] = (BUILTIN_TOOL_CONVERSATION,
                                      {"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]})
        if name == "features":
            convs = {k: (v, {"extra_info": {"lang": "en", "level": 3}}) for k, (v, _) in convs.items()}
        for cname, (msgs, extra) in convs.items():
            for agp in (False, True):
                case = {"name": f"{cname}{'_gen' if agp else ''}", "messages": msgs,
                        "add_generation_prompt": agp, "extra": extra}
                case.update(render(tmpl, msgs, agp, bos, eos, extra))
                cases.append(case)
        doc = {"name": name, "source": source, "template": tmpl, "bos_token": bos, "eos_token": eos,
               "cases": cases}
        path = os.path.join(args.out, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        n_err = sum(1 for c in cases if "error" in c)
        print(f"{path}: {len(cases)} cases ({n_err} errors)", file=sys.stderr)
    snippets = render_snippets()
    path = os.path.join(args.out, "snippets.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"name": "snippets", "cases": snippets}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{path}: {len(snippets)} cases ({sum(1 for c in snippets if 'error' in c)} errors)", file=sys.stderr)


if __name__ == "__main__":
    main()
