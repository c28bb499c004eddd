#!/usr/bin/env bash
# Interleaved A B A B timing of two checkouts on one idle host: the train step (preset M and the default
# shapes_t2i recipe) and sampling (preset M, Euler 20 steps, unguided and cfg 2). One JSON line per run.
#   git worktree add /tmp/A <old-commit>; git worktree add /tmp/B <new-commit>
#   bash benchmarks/ab_compare.sh /tmp/A /tmp/B [rounds=2] > ab.jsonl
set -euo pipefail
a="$1" b="$2" rounds="${3:-2}"
export JAX_PLATFORMS=cpu
json="$(mktemp)"
for round in $(seq "$rounds"); do
  for tree in "$a" "$b"; do
    cd "$tree"
    python benchmarks/train_throughput.py --preset M --steps 5 --repeats 3 --json_out "$json" > /dev/null 2>&1
    python -c "import json; r=json.load(open('$json')); print(json.dumps({'round': $round, 'tree': '$tree', 'bench': 'train M', 'img_per_s': r['img_per_s']}))"
    python benchmarks/train_throughput.py --config configs/shapes_t2i.py --steps 10 --repeats 3 --json_out "$json" > /dev/null 2>&1
    python -c "import json; r=json.load(open('$json')); print(json.dumps({'round': $round, 'tree': '$tree', 'bench': 'train shapes_t2i', 'img_per_s': r['img_per_s']}))"
    python benchmarks/sample_throughput.py --preset M --num_images 32 --steps 20 --solver euler --cfg_scale 2 --repeats 2 --json_out "$json" > /dev/null 2>&1
    python -c "import json; r=json.load(open('$json')); print(json.dumps({'round': $round, 'tree': '$tree', 'bench': 'sample M euler 20', 'unguided': r['unguided']['img_per_s'], 'guided': r['guided']['img_per_s']}))"
  done
done
rm -f "$json"
