"""A fixed load on an OpenAI-compatible server (pupil serve, llama-server): REQUESTS
streamed completions, CONCURRENCY at a time, each MAX_TOKENS long, on loopback.

    serve_load.py URL MODEL CONCURRENCY REQUESTS MAX_TOKENS TIME_LIMIT_S

Prints one JSON line: aggregate generated tokens/s (completion tokens of all requests
over the wall time from the first request to the last answer), median and p90 time to
first token, and the token counts. Standard library only.
"""

import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

url, model = sys.argv[1], sys.argv[2]
concurrency, requests, max_tokens = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
deadline = time.monotonic() + float(sys.argv[6])
target = urllib.parse.urlparse(url)

TOPICS = ["a lighthouse keeper", "a dragon who bakes bread", "a lost robot", "a city under the sea",
          "a clockmaker's apprentice", "the last train home", "a garden on the moon", "a talking river"]
CONTEXT = ("The lighthouse stood at the edge of the cliff for more than a hundred years. Every night its keeper "
           "climbed the narrow stairs, trimmed the wick and wound the clockwork that turned the great lens. Ships "
           "passing in the dark saw its beam sweep across the water and knew where the rocks were. ")


def prompt(i):
    return f"{CONTEXT}\nStory {i + 1}, about {TOPICS[i % len(TOPICS)]}:\n"


results, lock, next_request = [], threading.Lock(), [0]


def worker():
    while True:
        with lock:
            i = next_request[0]
            if i >= requests or time.monotonic() > deadline:
                return
            next_request[0] += 1
        body = json.dumps({"model": model, "prompt": prompt(i), "max_tokens": max_tokens, "temperature": 0.8,
                           "seed": i, "stream": True, "stream_options": {"include_usage": True}})
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=max(1.0, deadline - time.monotonic()))
        start = time.monotonic()
        conn.request("POST", target.path.rstrip("/") + "/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, (response.status, response.read())
        first, usage, chunks = None, None, 0
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                if choice.get("text"):
                    chunks += 1
                    if first is None:
                        first = time.monotonic() - start
        conn.close()
        tokens = usage["completion_tokens"] if usage else chunks
        with lock:
            results.append({"ttft": first, "tokens": tokens, "seconds": time.monotonic() - start})


t0 = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.monotonic() - t0
ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
tokens = sum(r["tokens"] for r in results)
print(json.dumps({
    "concurrency": concurrency,
    "requests": len(results),
    "completion_tokens": tokens,
    "wall_s": round(wall, 3),
    "tokens_per_s": round(tokens / wall, 2),
    "ttft_median_ms": round(1000 * statistics.median(ttfts), 1) if ttfts else None,
    "ttft_p90_ms": round(1000 * ttfts[int(0.9 * (len(ttfts) - 1))], 1) if ttfts else None,
    "complete": len(results) == requests,
}))
