"""A real OpenAI client against `pupil serve` (run by tests/serve.rs).

usage: serve_client.py BASE_URL MODEL PROMPT REFERENCE_JSON
REFERENCE_JSON is `pupil complete --json --logprobs 5 --temperature 0 -n 8 PROMPT`.
Each check prints "ok: ..."; any failure raises.
"""

import json
import math
import sys

import openai

base_url, model, prompt, reference_path = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key="unused")
reference = json.load(open(reference_path))


def ok(what):
    print(f"ok: {what}", flush=True)


# models.list
ids = [m.id for m in client.models.list().data]
assert ids == [model], ids
ok(f"models.list -> {ids}")

chat = [{"role": "user", "content": "Write two sentences about the sea."}]

# Chat: streamed text equals the text of the same request not streamed.
full = client.chat.completions.create(model=model, messages=chat, max_tokens=40, seed=7, temperature=0.9)
text = full.choices[0].message.content
assert full.choices[0].message.role == "assistant"
assert full.usage.completion_tokens >= 1 and full.usage.prompt_tokens > 5, full.usage
assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
pieces, finish, usage = [], None, None
stream = client.chat.completions.create(
    model=model, messages=chat, max_tokens=40, seed=7, temperature=0.9, stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
        assert chunk.choices == [], chunk
        continue
    delta = chunk.choices[0].delta
    if delta.content:
        pieces.append(delta.content)
    if chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
assert "".join(pieces) == text, ("".join(pieces), text)
assert finish == full.choices[0].finish_reason, (finish, full.choices[0].finish_reason)
assert usage is not None and usage.completion_tokens == full.usage.completion_tokens, usage
ok(f"chat: streamed == not streamed ({len(pieces)} chunks, finish {finish}); include_usage {usage.completion_tokens} tokens")

# Another seed, another text (the equality above is not a constant).
other = client.chat.completions.create(model=model, messages=chat, max_tokens=40, seed=8, temperature=0.9)
assert other.choices[0].message.content != text
ok("a different seed gives a different text")

# Completions: the same, and finish_reason=length at max_tokens.
c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, seed=3, temperature=0.8)
assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 12, c
s = "".join(ch.choices[0].text for ch in client.completions.create(
    model=model, prompt="Once upon a time", max_tokens=12, seed=3, temperature=0.8, stream=True))
assert s == c.choices[0].text, (s, c.choices[0].text)
ok(f"completions: streamed == not streamed, finish_reason=length after 12 tokens: {c.choices[0].text!r}")

# Stop strings: cut where the stop string begins, finish_reason=stop.
greedy = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
g = greedy.choices[0].text
stop = g[len(g) // 2: len(g) // 2 + 3]
assert len(stop) == 3 and stop.strip(), g
cut = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "never appears"])
assert cut.choices[0].text == g[: g.index(stop)], (cut.choices[0].text, g, stop)
assert cut.choices[0].finish_reason == "stop"
streamed_cut = "".join(ch.choices[0].text for ch in client.completions.create(
    model=model, prompt=prompt, max_tokens=24, temperature=0, stop=stop, stream=True))
assert streamed_cut == cut.choices[0].text, (streamed_cut, cut.choices[0].text)
ok(f"stop {stop!r}: {cut.choices[0].text!r} (streamed the same)")

# Logprobs, legacy shape: greedy tokens and values equal `pupil complete`'s distribution.
want = reference["logprobs"]
lp = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, logprobs=5)
got = lp.choices[0].logprobs
assert len(got.tokens) == len(want) == 8, (got.tokens, len(want))
assert got.text_offset[0] == 0 and all(b > a for a, b in zip(got.text_offset, got.text_offset[1:])), got.text_offset
for i, (w, value, top) in enumerate(zip(want, got.token_logprobs, got.top_logprobs)):
    assert abs(value - w["logprob"]) <= 1e-3 * max(1.0, abs(w["logprob"])), (i, value, w)
    assert len(top) == 5, top
    assert abs(max(top.values()) - w["top"][0][1]) <= 1e-3 * max(1.0, abs(w["top"][0][1])), (i, top, w)
ok("completions logprobs: 8 tokens x 5 alternatives equal pupil complete's (within 1e-3)")

# Logprobs, chat shape.
cl = client.chat.completions.create(model=model, messages=chat, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
content = cl.choices[0].logprobs.content
assert len(content) == cl.usage.completion_tokens, (len(content), cl.usage)
for entry in content:
    assert len(entry.top_logprobs) == 3 and entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "replace")
    assert entry.logprob <= entry.top_logprobs[0].logprob + 1e-6
    assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1 + 1e-4
assert "".join(bytes(e.bytes).decode("utf-8", "replace") for e in content) == cl.choices[0].message.content
ok("chat logprobs: token, logprob, bytes, 3 top_logprobs per token; the bytes spell the text")

# Per-request LoRA: the adapter changes the text, scale 0 restores it.
base = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0, extra_body={"lora": [{"id": 0, "scale": 0.0}]})
on = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0, extra_body={"lora": [{"id": 0, "scale": 1.0}]})
default = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
assert g.startswith(base.choices[0].text), (base, g)
assert on.choices[0].text != base.choices[0].text, on
assert default.choices[0].text == base.choices[0].text, "no lora field: the adapter at its loaded scale, 0"
ok(f"lora: scale 0 {base.choices[0].text!r}, scale 1 {on.choices[0].text!r}")

# Errors come back as the client's exceptions, with OpenAI's fields.
try:
    client.chat.completions.create(model="no-such-model", messages=chat, max_tokens=4)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e
try:
    client.chat.completions.create(model=model, messages=chat, max_tokens=4, n=2)
    raise AssertionError("n=2 was accepted")
except openai.BadRequestError as e:
    assert e.param == "n", e
ok("errors: NotFoundError(model_not_found), BadRequestError(param n)")

print("all checks passed")
