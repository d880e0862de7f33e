#!/usr/bin/env python3
"""llama.cpp's answers on a model, written as pupil's test fixtures (tests/fixtures/README.md).

    benches/fixtures.py MODEL.gguf OUT_DIR [--greedy-steps 48]
    benches/fixtures.py --synthetic SHAPE OUT_DIR     # `pupil synth --shape SHAPE --quant f16`

Runs `llama_fixtures` (benches/fixtures/llama_fixtures.c, built here against the libllama
of benches/llama-cpp.sh) for tokenizer.jsonl, greedy.jsonl and logits.jsonl, and renders
the GGUF's chat template with Jinja2 as Hugging Face does (sandboxed, trim_blocks,
lstrip_blocks) for chat_template.jsonl. The prompts are the SmolLM2 and Gemma fixtures'
own, plus code, CJK, digit and whitespace texts for the tokenizer.

With --synthetic the model is a random-weight file of a published shape (an architecture
check on the same file): only logits.jsonl, over SYNTHETIC_POSITIONS random byte tokens. Its
weights are F16: with 8-bit ones both programs round activations to 8 bits, which turns
their last-bit differences into whole 8-bit steps layer after layer, and on random weights
the logits then differ by tenths (tests/synthetic_vs_llama_cpp.rs).
"""
import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

TOKENIZER_TEXTS = [
    "Hello world", " Hello world", "The Llama jumped over the fence!", "  two leading spaces and trailing  ",
    "line one\nline two\n\n\nfour newlines\r\n", "Numbers: 3.14159, 1234567890, 2026-11-26, $1,000.00",
    "CamelCaseIdentifiers and snake_case_names = 42;", "def f(x):\n    return x ** 2  # square\n",
    "Ünïcödé façade — naïve café ☕ 東京 🦙", "tabs\tand\tmixed \t whitespace",
    "I'm sure you've heard they'll say we'd done it", "<|im_start|>user\nliteral special text<|im_end|>",
    "https://example.org/path?query=1&x=y#frag", "", "a", "    ", "ALLCAPS SHOUTING!!! ???",
    "emoji sequence 👩\u200d👩\u200d👧\u200d👦 and flags 🇫🇷🇯🇵",
    # Code, CJK, digits and whitespace runs (Qwen's pre-tokenizer splits digits one by one).
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|i| i * i).collect();\n\tprintln!(\"{v:?}\");\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot",
    "机器学习是人工智能的一个分支。日本語のテキストも。한국어 문장입니다.",
    "3141592653589793238462643383279 and 0.000001 and 1e-9 and 0x7fffffff",
    "a  b   c    d\n\n\n\n  e\t\t\tf \n \n ",
]
GREEDY_PROMPTS = [
    "The capital of France is", "The Llama jumped over the", "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
]
LOGITS_PROMPTS = [
    "The Llama jumped over the",
    "Distillation teaches a small student model to imitate a large teacher.",
]
SYNTHETIC_POSITIONS = 256

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Color of the sky?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
]
# Tool use as `apply_chat_template(messages, tools=TOOLS)` renders it: an offer of tools, and
# a full round (the assistant's call with dict arguments, the tool's reply, the answer).
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]
TOOL_CHATS = [
    [{"role": "user", "content": "What's the weather in Paris?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Weather in Tokyo, in fahrenheit?"},
     {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
         "name": "get_weather", "arguments": {"city": "Tokyo", "unit": "fahrenheit"}}}]},
     {"role": "tool", "content": "{\"temperature\": 68, \"sky\": \"clear\"}"},
     {"role": "assistant", "content": "It is 68°F and clear in Tokyo."}],
]


def gguf_metadata(path):
    """The GGUF file's metadata: strings, booleans, numbers, string arrays; other arrays as their length."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    formats = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    out = {}
    with open(path, "rb") as f:
        magic, _version, _n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        assert magic == b"GGUF", "not a GGUF file"

        def string():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8")

        def value(t):
            if t == 8:
                return string()
            if t == 9:
                (item, n) = struct.unpack("<IQ", f.read(12))
                items = [value(item) for _ in range(n)]
                return items if item == 8 else n
            return struct.unpack("<" + formats[t], f.read(sizes[t]))[0]

        for _ in range(n_kv):
            key = string()
            (t,) = struct.unpack("<I", f.read(4))
            out[key] = value(t)
    return out


class Llama:
    def __init__(self, model):
        self.model = model
        self.exe = os.path.join(tempfile.mkdtemp(), "llama_fixtures")
        # Builds llama.cpp if needed; prints DIR/build/bin, the source is DIR/src/vendor/llama.cpp.
        libs = subprocess.run([os.path.join(HERE, "llama-cpp.sh")], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
        src = os.path.join(os.path.dirname(os.path.dirname(libs)), "src", "vendor", "llama.cpp")
        subprocess.run(["gcc", "-O2", "-o", self.exe, os.path.join(HERE, "fixtures", "llama_fixtures.c"),
                        f"-I{src}/include", f"-I{src}/ggml/include", f"-L{libs}", "-lllama", "-lggml",
                        "-lggml-base", "-lm", f"-Wl,-rpath,{libs}"], check=True)

    def run(self, *args, data):
        with tempfile.NamedTemporaryFile("wb", delete=False) as f:
            f.write(data)
        try:
            return subprocess.run([self.exe, self.model, args[0], f.name, *map(str, args[1:])], check=True,
                                  capture_output=True).stdout.decode()
        finally:
            os.unlink(f.name)

    def tokenize(self, text, add_special, parse_special):
        out = self.run("tokenize", int(add_special), int(parse_special), data=text.encode()).split()
        return [int(i) for i in out]

    def greedy(self, ids, steps):
        lines = self.run("greedy", steps, data=" ".join(map(str, ids)).encode()).splitlines()
        return [int(l.split()[0]) for l in lines], [float(l.split()[1]) for l in lines]

    def logits(self, ids, top=20):
        positions = []
        for line in self.run("logits", top, data=" ".join(map(str, ids)).encode()).splitlines():
            lse, *pairs = line.split()
            top_ids, top_logits = zip(*((int(i), float(v)) for i, v in (p.split(":") for p in pairs)))
            positions.append({"logsumexp": float(lse), "top_ids": list(top_ids), "top_logits": list(top_logits)})
        return positions


def render(template, messages, add_generation_prompt, bos, eos, tools=None):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos, eos_token=eos, tools=tools)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="a GGUF file, or with --synthetic a shape of `pupil synth`")
    ap.add_argument("out")
    ap.add_argument("--greedy-steps", type=int, default=48)
    ap.add_argument("--synthetic", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.synthetic:
        return synthetic(a.model, a.out)
    meta = gguf_metadata(a.model)
    llama = Llama(a.model)

    def write(name, rows):
        with open(os.path.join(a.out, name), "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    write("tokenizer.jsonl", ({"text": t, "ids": llama.tokenize(t, False, False)} for t in TOKENIZER_TEXTS))
    greedy = []
    for p in GREEDY_PROMPTS:
        prompt_ids = llama.tokenize(p, True, True)
        ids, margins = llama.greedy(prompt_ids, a.greedy_steps)
        greedy.append({"prompt": p, "prompt_ids": prompt_ids, "ids": ids, "top1_margin": margins})
    write("greedy.jsonl", greedy)
    write("logits.jsonl", ({"prompt": p, "ids": ids, "positions": llama.logits(ids)}
                           for p in LOGITS_PROMPTS for ids in [llama.tokenize(p, True, True)]))
    template = meta.get("tokenizer.chat_template")
    if template:
        def token(which):
            i = meta.get(f"tokenizer.ggml.{which}_token_id")
            return meta["tokenizer.ggml.tokens"][i] if i is not None else ""

        rows = []
        for messages, tools in [(m, None) for m in CHATS] + [(m, TOOLS) for m in TOOL_CHATS]:
            for agp in (True, False):
                text = render(template, messages, agp, token("bos"), token("eos"), tools)
                row = {"messages": messages, "add_generation_prompt": agp, "text": text,
                       "ids": llama.tokenize(text, False, True)}
                if tools:
                    row["tools"] = tools
                rows.append(row)
        write("chat_template.jsonl", rows)
    sha = hashlib.sha256()
    with open(a.model, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    commit = subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(__file__)), "log", "-1", "--format=%h"],
                            capture_output=True, text=True).stdout.strip()
    with open(os.path.join(a.out, "model.json"), "w") as f:
        json.dump({"model_file": os.path.basename(a.model), "sha256": sha.hexdigest(),
                   "n_vocab": len(meta.get("tokenizer.ggml.tokens", [])), "architecture": meta.get("general.architecture"),
                   "reference": "llama.cpp (benches/llama-cpp.sh) via benches/fixtures/llama_fixtures.c, CPU, "
                                "2 threads, f32 logits",
                   "made_by": f"benches/fixtures.py at pupil {commit}",
                   "notes": "tokenizer.jsonl: no BOS, no special-token parsing; chat_template.jsonl: rendered by "
                            "Jinja2 (sandboxed, trim_blocks, lstrip_blocks), tokenized with special tokens parsed, "
                            "no BOS; greedy/logits prompt ids: special tokens parsed, BOS added where the model "
                            "metadata asks for it"}, f, indent=1, ensure_ascii=False)
    print(f"fixtures written to {a.out}", file=sys.stderr)


def synthetic(shape, out):
    """llama.cpp's logits on `pupil synth --shape SHAPE --quant f16` over random byte tokens."""
    import random

    root = os.path.dirname(HERE)
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=root, check=True)
    path = os.path.join(tempfile.mkdtemp(), f"{shape}.gguf")
    subprocess.run([os.path.join(root, "target", "release", "pupil"), "synth", "--shape", shape, "--quant", "f16",
                    "-o", path], check=True)
    rng = random.Random(7)
    ids = [rng.randrange(256) for _ in range(SYNTHETIC_POSITIONS)]
    positions = Llama(path).logits(ids)
    with open(os.path.join(out, f"{shape}-f16.logits.jsonl"), "w") as f:
        f.write(json.dumps({"shape": shape, "quant": "f16", "ids": ids, "positions": positions}) + "\n")
    os.unlink(path)


if __name__ == "__main__":
    main()
