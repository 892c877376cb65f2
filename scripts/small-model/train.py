#!/usr/bin/env python3
"""Trains the small model hostrun ships (models/small) on the corpus corpus.py
makes, on one GPU, and exports it as an HF Llama folder in bf16.

    train.py --corpus DIR --tokenizer DIR --out DIR [--minutes 7] [--log FILE]

DIR of --corpus holds pretrain.txt, chat.jsonl (plain or .gz) and the
held-out text to report perplexity on (heldout.txt); --tokenizer holds
Llama-3's tokenizer.json. Needs torch, transformers, safetensors, tokenizers.

Shape: Llama-3's architecture and vocabulary (128256 ids, its chat template),
a small body (hidden 256, 6 layers, 4 query heads of 64, 2 KV heads, SwiGLU
768), embeddings tied to the LM head.

Why the vocabulary is trained compactly: git should hold the model in about
20 MB, so only the ids the corpus uses often (the --keep most frequent) keep
an embedding row; every other row is zero in the export. A zero row's logit
is exactly 0, so the exported model's softmax over 128256 ids equals a
softmax over the kept rows plus one extra logit of log(number of zero rows)
that stands for all of them together. Training computes that smaller softmax
(about 4x fewer head FLOPs) and is exactly the exported model's loss: a kept
target's log-probability is the same, and a dropped target's differs by the
constant log(number of zero rows), which has no gradient. Dropped ids in the
input embed as zeros, as they will in the export.

Schedule, by wall time (so a budget in minutes is kept whatever the GPU):
AdamW, linear warm-up then cosine decay; the first half on the text alone
(next-token prediction on dictionary entries), the second half on chat
turns (loss on the assistant's tokens only) mixed with text, one text row
in four. The end reports the held-out perplexity as hostrun's `bench
perplexity` computes it (same windows), through the exported folder loaded
by transformers, and greedy replies to a few questions.
"""
import argparse
import gzip
import json
import math
import os
import time
from collections import Counter

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

BOS, EOT = 128000, 128009
EOS_IDS = [128001, 128009]
VOCAB = 128256
USER_PREFIX = "<|start_header_id|>user<|end_header_id|>\n\n"
ASSISTANT_PREFIX = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
SAMPLE_QUESTIONS = ["What does abate mean?", "What does serene mean?", "Give an example of generous.",
                    "What is the opposite of happy?", "What kind of thing is a violin?", "hello there",
                    "What does ephemeral mean?", "What is another word for big?"]


def log(args, message):
    print(message, flush=True)
    with open(args.log, "a") as f:
        f.write(message + "\n")


def read_lines(folder, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                return f.read().splitlines()
    raise SystemExit(f"{folder}: neither {name} nor {name}.gz")


def encode_all(tokenizer, texts):
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def template_ids(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return ids


def build_data(args, tokenizer):
    text_lines = read_lines(args.corpus, "pretrain.txt")
    chat = [json.loads(line) for line in read_lines(args.corpus, "chat.jsonl")]
    text_ids = encode_all(tokenizer, [line + "\n" for line in text_lines])
    user_ids = encode_all(tokenizer, [c["user"].strip() for c in chat])
    answer_ids = encode_all(tokenizer, [c["assistant"].strip() for c in chat])
    user_prefix, assistant_prefix = template_ids(tokenizer, USER_PREFIX), template_ids(tokenizer, ASSISTANT_PREFIX)
    assert assistant_prefix[0] == EOT and user_prefix[0] == 128006, (user_prefix, assistant_prefix)
    # One conversation as hostrun's llama3 template renders it, then the reply and <|eot_id|>.
    conversations = []
    for u, a in zip(user_ids, answer_ids):
        prompt = [BOS] + user_prefix + u + assistant_prefix
        conversations.append((prompt, a + [EOT]))
    counts = Counter()
    for ids in text_ids:
        counts.update(ids)
    for prompt, reply in conversations:
        counts.update(prompt)
        counts.update(reply)
    return text_ids, conversations, counts


def choose_kept(counts, keep):
    # The most frequent ids (ties by id, so the choice is deterministic), plus every special id the template uses.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = {i for i, _ in ranked[:keep]} | {BOS, EOT, 128001, 128006, 128007}
    return sorted(kept)


def pack_chat(conversations, to_compact, seq_len, generator):
    # Whole conversations packed into rows; labels only on replies; padding is unlabelled.
    order = torch.randperm(len(conversations), generator=generator).tolist()
    rows, labels = [], []
    row, lab = [], []
    for i in order:
        prompt, reply = conversations[i]
        ids = prompt + reply
        if len(ids) > seq_len:
            continue
        if len(row) + len(ids) > seq_len:
            rows.append(row + [BOS] * (seq_len - len(row)))
            labels.append(lab + [False] * (seq_len - len(lab)))
            row, lab = [], []
        row += ids
        lab += [False] * len(prompt) + [True] * len(reply)
    rows.append(row + [BOS] * (seq_len - len(row)))
    labels.append(lab + [False] * (seq_len - len(lab)))
    ids = to_compact[torch.tensor(rows)]
    # A label at position t is the token at t, predicted from t-1.
    return ids, torch.tensor(labels)


def make_config(args, vocab_size):
    return LlamaConfig(vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                       max_position_embeddings=args.max_positions, rope_theta=500000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS_IDS,
                       attention_bias=False, mlp_bias=False, hidden_act="silu")


class CompactLoss:
    """Cross-entropy of the full-vocabulary model through the kept rows (see the module's docstring)."""

    def __init__(self, kept_count, bos):
        self.bos = bos  # compact id of <|begin_of_text|>
        self.dropped_logit = math.log(VOCAB - kept_count)
        self.other = kept_count  # compact id of "any dropped id"; its embedding row stays zero

    def __call__(self, model, ids, targets, mask):
        hidden = model.model(input_ids=ids).last_hidden_state
        logits = F.linear(hidden, model.model.embed_tokens.weight).float()
        logits[..., self.other] += self.dropped_logit
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        mask = mask.flatten().float()
        return (loss * mask).sum() / mask.sum().clamp(min=1)


def train(args, model, text_stream, chat_ids, chat_labels, loss_fn, device):
    seq = args.seq_len
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), fused=True)
    budget = args.minutes * 60
    start = time.time()
    generator = torch.Generator(device=device).manual_seed(1)
    step, tokens, smoothed = 0, 0, {}
    last_log = start
    text_positions = torch.arange(seq, device=device)
    while True:
        elapsed = time.time() - start
        fraction = elapsed / budget
        if fraction >= 1:
            break
        phase = "text" if fraction < args.text_share else "chat"
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = []
        text_rows = args.batch if phase == "text" else args.batch // 4
        starts = torch.randint(0, text_stream.numel() - seq, (text_rows,), device=device, generator=generator)
        rows = text_stream[starts[:, None] + text_positions]
        rows[:, 0] = loss_fn.bos
        batch.append((rows, torch.ones_like(rows, dtype=torch.bool)))
        if phase == "chat":
            picks = torch.randint(0, chat_ids.shape[0], (args.batch - text_rows,), device=device, generator=generator)
            batch.append((chat_ids[picks], chat_labels[picks]))
        ids = torch.cat([b[0] for b in batch])
        labels = torch.cat([b[1] for b in batch])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model, ids[:, :-1], ids[:, 1:], labels[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.model.embed_tokens.weight.grad[loss_fn.other].zero_()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens += ids.numel()
        value = loss.item() if step % 50 == 0 or step < 5 else None
        if value is not None:
            smoothed[phase] = value if phase not in smoothed else 0.7 * smoothed[phase] + 0.3 * value
        if time.time() - last_log > 20 or step == 3:
            last_log = time.time()
            log(args, f"step {step} {elapsed:.0f}s phase {phase} lr {lr:.2e} loss {smoothed.get(phase, float('nan')):.3f} "
                      f"({tokens / max(elapsed, 1e-9) / 1e3:.0f}k tok/s)")
    log(args, f"trained {step} steps, {tokens / 1e6:.1f}M tokens in {time.time() - start:.0f}s; "
              f"final smoothed losses {smoothed}")


def export(args, model, kept, tokenizer_dir):
    os.makedirs(args.out, exist_ok=True)
    compact = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    embed = torch.zeros(VOCAB, args.hidden)
    embed[torch.tensor(kept)] = compact["model.embed_tokens.weight"][: len(kept)]
    tensors = {}
    for name, value in compact.items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings
        tensors[name] = (embed if name == "model.embed_tokens.weight" else value).to(torch.bfloat16).contiguous()
    save_file(tensors, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
        "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
        "head_dim": args.hidden // args.heads, "vocab_size": VOCAB, "max_position_embeddings": args.max_positions,
        "rope_theta": 500000.0, "rope_scaling": None, "rms_norm_eps": 1e-05, "tie_word_embeddings": True,
        "attention_bias": False, "mlp_bias": False, "hidden_act": "silu", "bos_token_id": BOS,
        "eos_token_id": EOS_IDS, "torch_dtype": "bfloat16", "attention_dropout": 0.0, "initializer_range": 0.02,
        "pretraining_tp": 1, "use_cache": True,
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": BOS, "eos_token_id": EOS_IDS}, f, indent=2)
        f.write("\n")


def heldout_windows(ids, context, stride):
    # As `hostrun bench perplexity` lays them out: each window is BOS and up to
    # context-1 tokens of text; a window scores the tokens the one before did
    # not, each from all the text before it in the window.
    text_len = context - 1
    windows, scored_end, begin = [], 0, 0
    while scored_end < len(ids):
        end = min(begin + text_len, len(ids))
        windows.append((ids[begin:end], scored_end - begin))  # tokens, index of the first scored one
        scored_end = end
        begin += stride
    return windows


@torch.no_grad()
def evaluate(args, tokenizer, device):
    model = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32).to(device).eval()
    text = "\n".join(read_lines(args.corpus, "heldout.txt")) + "\n"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    nll = []
    for window, first in heldout_windows(ids, args.eval_context, args.eval_stride):
        inputs = torch.tensor([[BOS] + window], device=device)
        logits = model(inputs).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = inputs[0, 1:]
        token_lp = logprobs.gather(1, targets[:, None])[:, 0]
        nll.append(-token_lp[first:].double().cpu())
    nll = torch.cat(nll)
    mean = nll.mean().item()
    se = (nll.std().item() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    log(args, f"held-out: {len(nll)} tokens, perplexity {math.exp(mean):.4f} +/- {math.exp(mean) * se:.4f} "
              f"(f32 HF, exported weights, context {args.eval_context} stride {args.eval_stride})")
    model = model.to(torch.bfloat16)
    for question in SAMPLE_QUESTIONS:
        prompt = [BOS] + template_ids(tokenizer, USER_PREFIX) + tokenizer.encode(question, add_special_tokens=False).ids \
            + template_ids(tokenizer, ASSISTANT_PREFIX)
        out = model.generate(torch.tensor([prompt], device=device), max_new_tokens=60, do_sample=False,
                             eos_token_id=EOS_IDS, pad_token_id=EOT)
        reply = tokenizer.decode(out[0, len(prompt):].tolist(), skip_special_tokens=True)
        log(args, f"Q: {question}\nA: {reply}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--log", default="train-log.txt")
    parser.add_argument("--minutes", type=float, default=7.0)
    parser.add_argument("--text-share", type=float, default=0.5, help="share of the time on text alone")
    parser.add_argument("--keep", type=int, default=38000, help="embedding rows kept (most frequent ids)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--max-positions", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--eval-context", type=int, default=512)
    parser.add_argument("--eval-stride", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.time()
    tokenizer = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    text_ids, conversations, counts = build_data(args, tokenizer)
    kept = choose_kept(counts, args.keep)
    covered = sum(counts[i] for i in kept) / sum(counts.values())
    log(args, f"data: {sum(map(len, text_ids)) / 1e6:.2f}M text tokens, {len(conversations)} conversations, "
              f"{len(counts)} distinct ids, {len(kept)} kept ({covered:.4%} of occurrences); "
              f"{time.time() - t0:.0f}s")
    to_compact = torch.full((VOCAB,), len(kept), dtype=torch.long)
    to_compact[torch.tensor(kept)] = torch.arange(len(kept))
    text_stream = to_compact[torch.tensor([i for ids in text_ids for i in ids])].to(device)
    generator = torch.Generator().manual_seed(args.seed)
    chat_ids, chat_labels = pack_chat(conversations, to_compact, args.seq_len, generator)
    chat_ids, chat_labels = chat_ids.to(device), chat_labels.to(device)
    log(args, f"packed: {text_stream.numel() / 1e6:.2f}M text tokens, {chat_ids.shape[0]} chat rows of {args.seq_len}, "
              f"{chat_labels.float().mean().item():.1%} of chat positions labelled; {time.time() - t0:.0f}s")

    model = LlamaForCausalLM(make_config(args, len(kept) + 1)).to(device)
    with torch.no_grad():
        model.model.embed_tokens.weight[len(kept)].zero_()
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    log(args, f"model: {body / 1e6:.2f}M non-embedding parameters, {len(kept)} x {args.hidden} embedding rows")
    loss_fn = CompactLoss(len(kept), int(to_compact[BOS]))
    model.train()
    train(args, model, text_stream, chat_ids, chat_labels, loss_fn, device)
    export(args, model, kept, args.tokenizer)
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    log(args, f"exported {args.out}: model.safetensors {size / 1e6:.1f} MB")
    evaluate(args, tokenizer, device)
    log(args, f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
