#!/usr/bin/env python3
# How far FP8 moves a Llama folder's logits in HF transformers itself, as a
# yardstick for `hostrun lite fp8` (issue 17's cosine bar): every linear layer
# but the LM head becomes per-output-channel e4m3 weights times per-token
# dynamic e4m3 activations (scales max|row| / 448, products summed in f32),
# the scheme plugins/fp8 implements. Prints the cosine similarity of the
# logits of 100 random token ids (last position, minimum and mean over the
# positions) for bf16 against f32, and FP8 against the same dtype without it.
# Needs a GPU with PyTorch and transformers (the GPU machine):
#   python3 scripts/fp8_hf_simulation.py MODEL_DIR
import sys

import torch
from transformers import LlamaForCausalLM

torch.backends.cuda.matmul.allow_tf32 = False
E4M3 = torch.float8_e4m3fn


def rows_to_e4m3(t):
    """Each row rounded to e4m3 on its own scale; returns (decoded values, scales)."""
    scale = t.float().abs().amax(-1, keepdim=True) / 448.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (t.float() / scale).to(E4M3).float(), scale


class Fp8Linear(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.weight, scale = rows_to_e4m3(linear.weight.data)
        self.weight_scale = scale.view(-1)

    def forward(self, x):
        xq, x_scale = rows_to_e4m3(x)
        return ((xq @ self.weight.t()) * x_scale * self.weight_scale).to(x.dtype)


def to_fp8(model):
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and name != "lm_head":
                setattr(module, name, Fp8Linear(child))


def logits(folder, dtype, fp8):
    model = LlamaForCausalLM.from_pretrained(folder, torch_dtype=dtype).cuda().eval()
    if fp8:
        to_fp8(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 100), generator=torch.Generator().manual_seed(5)).cuda()
    with torch.no_grad():
        out = model(ids).logits[0].float().cpu()
    del model
    torch.cuda.empty_cache()
    return out


def cosine(a, b):
    c = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
    return f"last {c[-1].item():.6f} min {c.min().item():.6f} mean {c.mean().item():.6f}"


def main():
    folder = sys.argv[1]
    bf16, f32 = logits(folder, torch.bfloat16, False), logits(folder, torch.float32, False)
    fp8_bf16, fp8_f32 = logits(folder, torch.bfloat16, True), logits(folder, torch.float32, True)
    print(folder)
    print("bf16 vs f32          ", cosine(bf16, f32))
    print("fp8(bf16 act) vs bf16", cosine(fp8_bf16, bf16))
    print("fp8(f32 act) vs f32  ", cosine(fp8_f32, f32))
    print("fp8 bf16 vs fp8 f32  ", cosine(fp8_bf16, fp8_f32))


if __name__ == "__main__":
    main()
