#!/usr/bin/env python3
"""Writes a `hostrun bench throughput --dataset` workload: a CSV of
input_len,output_len rows, drawn uniformly from the given ranges with a fixed
seed (Python's random.Random, stable across versions), so the committed file
can be made again byte for byte.

  bench/make_workload.py --rows 1000 --input 1000 8000 --output 150 250 \
      --max-total 8192 --seed 14 > bench/long_context_1k.csv

--max-total caps input_len + output_len (the model's context: 8192 for
Llama-3-8B): an input that would not leave room for its reply is shortened.
"""
import argparse
import random
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--input", type=int, nargs=2, metavar=("MIN", "MAX"), required=True)
    parser.add_argument("--output", type=int, nargs=2, metavar=("MIN", "MAX"), required=True)
    parser.add_argument("--max-total", type=int, default=0, help="cap on input_len + output_len (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.rows < 1 or not (1 <= args.input[0] <= args.input[1]) or not (1 <= args.output[0] <= args.output[1]):
        parser.error("--rows must be positive and each range MIN <= MAX with MIN >= 1")
    if args.max_total and args.max_total < 1 + args.output[1]:
        parser.error(f"--max-total {args.max_total} leaves no room for a {args.output[1]}-token reply")
    rng = random.Random(args.seed)
    out = sys.stdout
    out.write("input_len,output_len\n")
    for _ in range(args.rows):
        input_len = rng.randint(*args.input)
        output_len = rng.randint(*args.output)
        if args.max_total:
            input_len = min(input_len, args.max_total - output_len)
        out.write(f"{input_len},{output_len}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
