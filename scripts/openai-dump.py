"""Ask any OpenAI-compatible server (pupil serve, vLLM, llama-server) to answer chat
prompts with logprobs, and write the dump `pupil targets import --from openai` reads:
one line per prompt, {"messages": [...], "response": <the chat completion>}.

    scripts/openai-dump.py URL MODEL PROMPTS.jsonl OUT.jsonl [options]

PROMPTS.jsonl holds {"messages": [...]} lines (the format `pupil targets make --prompts`
reads; a trailing assistant message is dropped: the server writes the reply). Lines go to
OUT.jsonl.partial as they come back, so an interrupted run resumes where it stopped; the
finished file is renamed to OUT.jsonl. Standard library only.

Options: --top-logprobs K (default 16, at most 20), --max-tokens N (256), --temperature T
(0.8), --seed S (0; line i uses S + i), --split NAME (only lines whose "split" is NAME),
--api-key KEY.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

p = argparse.ArgumentParser()
p.add_argument("url")
p.add_argument("model")
p.add_argument("prompts")
p.add_argument("out")
p.add_argument("--top-logprobs", type=int, default=16)
p.add_argument("--max-tokens", type=int, default=256)
p.add_argument("--temperature", type=float, default=0.8)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--split")
p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
a = p.parse_args()

lines = []
with open(a.prompts) as f:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row["messages"]
        except (ValueError, KeyError, TypeError) as e:
            sys.exit(f"{a.prompts}:{n}: not a {{\"messages\": [...]}} line ({e})")
        if a.split is not None and row.get("split") != a.split:
            continue
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        lines.append(messages)

partial = a.out + ".partial"
done = 0
if os.path.exists(partial):
    with open(partial) as f:
        done = sum(1 for line in f if line.strip())
    print(f"resuming after {done} lines in {partial}", file=sys.stderr)

with open(partial, "a") as out:
    for i, messages in enumerate(lines[done:], done):
        body = {"model": a.model, "messages": messages, "max_tokens": a.max_tokens, "temperature": a.temperature,
                "seed": a.seed + i, "logprobs": True, "top_logprobs": a.top_logprobs}
        request = urllib.request.Request(a.url.rstrip("/") + "/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json", "Authorization": f"Bearer {a.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=600) as r:
                response = json.load(r)
        except urllib.error.HTTPError as e:
            sys.exit(f"line {i + 1}: the server answered {e.code}: {e.read().decode(errors='replace')}")
        out.write(json.dumps({"messages": messages, "response": response}) + "\n")
        out.flush()
        print(f"{i + 1}/{len(lines)}", file=sys.stderr)
os.replace(partial, a.out)
print(a.out)
