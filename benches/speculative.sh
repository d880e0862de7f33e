#!/usr/bin/env bash
# Speculative decoding against plain decoding: the same model, prompt, greedy settings
# and threads, alternating plain / speculative runs; prints the median generation t/s of
# each, their ratio, the share of drafted tokens kept, and whether the two texts were
# identical (they must be).
#
#   benches/speculative.sh [ROUNDS] [MODEL]
#
# SPEC picks the drafter: "--lookup" (default) or "--draft DRAFT_MODEL". Prompts:
# benches/prompts/*.txt, each a user message rendered with the model's chat template by
# `pupil complete --chat`. Defaults: 5 rounds, smollm2-135m-instruct, THREADS=2,
# DRAFT=8 (--draft-max), TOKENS=200.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
MODEL=${2:-smollm2-135m-instruct}
THREADS=${THREADS:-2}
DRAFT=${DRAFT:-8}
SPEC=${SPEC:---lookup}
TOKENS=${TOKENS:-200}
cargo build --release -q
PUPIL=target/release/pupil
RESULTS=$(mktemp -d)
for p in benches/prompts/*.txt; do
  name=$(basename "$p" .txt)
  for r in $(seq "$ROUNDS"); do
    for n in 0 "$DRAFT"; do
      spec=(); [ "$n" = 0 ] || spec=($SPEC --draft-max "$n")
      "$PUPIL" complete -m "$MODEL" -t "$THREADS" --temp 0 -n "$TOKENS" --chat "${spec[@]}" --json -f "$p" \
        2>/dev/null >"$RESULTS/$name-$n-$r.json"
    done
  done
done
python3 - "$RESULTS" "$ROUNDS" "$DRAFT" "$THREADS" "$MODEL" "$SPEC" <<'PY'
import json, os, statistics, sys, collections
d, rounds, draft = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = collections.defaultdict(list)
for f in sorted(os.listdir(d)):
    name, n, _ = f[:-5].rsplit("-", 2)
    runs[(name, n)].append(json.load(open(os.path.join(d, f))))
print(f"{sys.argv[5]}, threads {sys.argv[4]}, {rounds} alternating rounds, greedy, {sys.argv[6]} --draft-max {draft}; median generation t/s\n")
print("| prompt | tokens | plain | speculative | speculative / plain | drafted kept | same text |")
print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
for name in sorted({k[0] for k in runs}):
    plain, spec = runs[(name, "0")], runs[(name, draft)]
    tps = lambda rs: statistics.median(r["timings"]["generation_tps"] for r in rs)
    t = spec[0]["timings"]
    kept = f'{t["accepted_tokens"]}/{t["drafted_tokens"]}'
    same = all(r["ids"] == plain[0]["ids"] for r in plain + spec)
    print(f"| {name} | {len(plain[0]['ids'])} | {tps(plain):.1f} | {tps(spec):.1f} | {tps(spec)/tps(plain):.2f} | {kept} | {'yes' if same else 'NO'} |")
PY
