#!/usr/bin/env python3
"""LLaVA parity with HF transformers: one random LLaVA folder, one image.

Run on the GPU machine (PyTorch, transformers, onnxruntime), after hostrun has
answered the same request (its JSON in --hostrun, from api_server's
/v1/chat/completions with logprobs, greedy):

  llava_hf_parity.py --folder DIR --image PNG --hostrun reply.json --graph vision.onnx --out parity.json

Compares, against LlavaForConditionalGeneration in f32 (the oracle):
  - image features: the ONNX graph hostrun writes and runs (hostrun-vision-onnx
    DIR vision.onnx), executed by onnxruntime, and HF's own bf16 run;
  - the first generated position's top-20 log-probabilities and the greedy
    tokens hostrun returned, and HF bf16's, as the yardstick for bf16 noise.
The prompt is the llava-llama3 template's (Llama-3's, "<image>\\n" before the
text), the <image> token expanded to the image's feature count as the engine
does; its length must equal hostrun's usage.prompt_tokens.
"""
import argparse
import json
import math
import sys


def fail(message):
    print(f"llava_hf_parity: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--hostrun", required=True, help="api_server's reply (JSON)")
    parser.add_argument("--graph", help="hostrun-vision-onnx's graph of the folder (for onnxruntime)")
    parser.add_argument("--text", default="Describe the image.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration

    reply = json.load(open(args.hostrun))
    tokenizer = AutoTokenizer.from_pretrained(args.folder)
    processor = CLIPImageProcessor.from_pretrained(args.folder)
    pixels = processor(images=Image.open(args.image).convert("RGB"), return_tensors="pt")["pixel_values"]

    result = {"transformers": transformers.__version__, "torch": torch.__version__, "folder": args.folder}
    def load(dtype):
        return LlavaForConditionalGeneration.from_pretrained(args.folder, torch_dtype=dtype,
                                                             attn_implementation="eager").to("cuda").eval()

    reference = load(torch.float32)
    config = reference.config

    def features(model):
        inner = getattr(model, "model", model)
        tower = getattr(inner, "vision_tower", None) or model.vision_tower
        projector = getattr(inner, "multi_modal_projector", None) or model.multi_modal_projector
        with torch.no_grad():
            states = tower(pixels.to("cuda", dtype=next(tower.parameters()).dtype),
                           output_hidden_states=True).hidden_states[config.vision_feature_layer]
            if config.vision_feature_select_strategy == "default":
                states = states[:, 1:]
            return projector(states).float().cpu().numpy()[0]

    def compare(got, want):
        got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
        err = np.abs(got - want)
        cos = float(np.dot(got, want) / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-30))
        return {"max_abs_error": float(err.max()), "max_abs_value": float(np.abs(want).max()),
                "relative_l2": float(np.linalg.norm(got - want) / (np.linalg.norm(want) + 1e-30)), "cosine": cos}

    ref_features = features(reference)
    tokens_per_image = ref_features.shape[0]
    result["features_shape"] = list(ref_features.shape)
    if args.graph:
        import onnxruntime as ort
        session = ort.InferenceSession(args.graph, providers=["CPUExecutionProvider"])
        ours = session.run(None, {session.get_inputs()[0].name: pixels.numpy().astype(np.float32)})[0][0]
        result["features_onnx_graph_vs_hf_f32"] = compare(ours, ref_features)

    image_id = config.image_token_index if hasattr(config, "image_token_index") else config.image_token_id
    text = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\n" + args.text +
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids.count(image_id) != 1:
        fail(f"the prompt holds {ids.count(image_id)} <image> tokens (id {image_id})")
    at = ids.index(image_id)
    ids = ids[:at] + [image_id] * tokens_per_image + ids[at + 1:]
    result["prompt_tokens"] = len(ids)
    result["hostrun_prompt_tokens"] = reply["usage"]["prompt_tokens"]
    if len(ids) != reply["usage"]["prompt_tokens"]:
        fail(f"the prompt is {len(ids)} tokens here and {reply['usage']['prompt_tokens']} in hostrun")
    input_ids = torch.tensor([ids], device="cuda")
    steps = len(reply["choices"][0]["logprobs"]["content"])

    def run(model):
        with torch.no_grad():
            pv = pixels.to("cuda", dtype=next(model.parameters()).dtype)
            logits = model(input_ids=input_ids, pixel_values=pv).logits[0, -1].float()
            logprobs = torch.log_softmax(logits, dim=-1).cpu()
            generated = model.generate(input_ids=input_ids, pixel_values=pv, max_new_tokens=steps, do_sample=False,
                                       attention_mask=torch.ones_like(input_ids))[0, len(ids):].tolist()
        return logprobs, generated

    ref_logprobs, ref_tokens = run(reference)
    del reference
    torch.cuda.empty_cache()
    bf16 = load(torch.bfloat16)
    result["features_hf_bf16_vs_hf_f32"] = compare(features(bf16), ref_features)
    bf16_logprobs, bf16_tokens = run(bf16)

    ours = reply["choices"][0]["logprobs"]["content"]
    ours_top = {entry["token"]: entry["logprob"] for entry in ours[0]["top_logprobs"]}
    ref_top = torch.topk(ref_logprobs, len(ours_top))
    def token_text(i):
        return tokenizer.decode([i])
    rows = []
    for value, index in zip(ref_top.values.tolist(), ref_top.indices.tolist()):
        piece = token_text(index)
        rows.append({"token": piece, "hf_f32": value, "hf_bf16": float(bf16_logprobs[index]),
                     "hostrun": ours_top.get(piece)})
    result["first_position_top"] = rows
    present = [r for r in rows if r["hostrun"] is not None]
    result["first_position_top_shared"] = f"{len(present)} of {len(rows)}"
    result["first_position_max_logprob_error"] = {
        "hostrun": max((abs(r["hostrun"] - r["hf_f32"]) for r in present), default=math.nan),
        "hf_bf16": max(abs(r["hf_bf16"] - r["hf_f32"]) for r in rows)}
    ours_tokens = [entry["token"] for entry in ours]
    ref_pieces = [token_text(i) for i in ref_tokens]
    bf16_pieces = [token_text(i) for i in bf16_tokens]
    def agree(a, b):
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n
    result["greedy"] = {"steps": steps, "hostrun": ours_tokens, "hf_f32": ref_pieces, "hf_bf16": bf16_pieces,
                        "hostrun_prefix_equal_to_hf_f32": agree(ours_tokens, ref_pieces),
                        "hf_bf16_prefix_equal_to_hf_f32": agree(bf16_pieces, ref_pieces)}
    json.dump(result, open(args.out, "w"), indent=1)
    print(json.dumps({k: v for k, v in result.items() if k not in ("first_position_top",)}, indent=1))


if __name__ == "__main__":
    main()
