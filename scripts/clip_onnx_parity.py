#!/usr/bin/env python3
"""A torch.onnx export of HF's CLIP vision model through hostrun's ONNX executors.

Run on the GPU machine (PyTorch, transformers, onnxruntime) with the built
hostrun-onnx-run:

  clip_onnx_parity.py --tool hostrun-onnx-run --work DIR --out clip.json [--shape vit-l-336]

A CLIPVisionModel with random weights (seeded) at the ViT-L/14-336 shape
(LLaVA-Llama-3's tower) is exported by torch.onnx (opset 17, dynamic batch)
as it is, then the same pixels go through: onnxruntime (CPU, f32: the
oracle), hostrun's CPU executor, hostrun's CUDA executor in f32 and in bf16
(tensor-core GEMMs, fused attention), and HF itself in bf16 (the yardstick
for bf16 noise). Reported per output: the largest absolute error relative to
the output's largest value, and the relative L2 error. Then timings on the
GPU: hostrun's CUDA executor (CUDA events around each replay of its graph)
and HF bf16 with PyTorch SDPA (eager, CUDA events), at batch 1 and batch 32.
"""
import argparse
import json
import os
import subprocess
import sys
import time


SHAPES = {
    "vit-l-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=336, patch_size=14),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 image_size=56, patch_size=14),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", required=True, help="hostrun-onnx-run")
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", default="vit-l-336", choices=sorted(SHAPES))
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--skip-cpu", action="store_true", help="no hostrun CPU run (slow at ViT-L)")
    parser.add_argument("--compare-tool", action="append", default=[],
                        help="another hostrun-onnx-run (another build), checked and timed beside --tool on the same "
                        "graph and pixels, in turns; repeatable (reported as hostrun_b, hostrun_c, ...)")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModel

    os.makedirs(args.work, exist_ok=True)
    torch.manual_seed(2024)
    config = CLIPVisionConfig(**SHAPES[args.shape], hidden_act="quick_gelu")
    model = CLIPVisionModel(config).eval()
    side = config.image_size
    result = {"transformers": transformers.__version__, "torch": torch.__version__, "onnxruntime": ort.__version__,
              "shape": args.shape, "config": SHAPES[args.shape], "gpu": torch.cuda.get_device_name()}

    graph = os.path.join(args.work, "clip.onnx")
    pixels = torch.randn(1, 3, side, side)
    t = time.time()
    export = dict(input_names=["pixel_values"], output_names=["last_hidden_state", "pooler_output"],
                  dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=17)
    try:
        torch.onnx.export(model, (pixels,), graph, dynamo=False, **export)
    except TypeError:  # a torch without the dynamo switch
        torch.onnx.export(model, (pixels,), graph, **export)
    result["export_s"] = time.time() - t
    import onnx
    ops = sorted({n.op_type for n in onnx.load(graph, load_external_data=False).graph.node})
    result["exported_ops"] = ops
    print("exported ops:", ops, flush=True)

    raw = os.path.join(args.work, "pixels.bin")
    pixels.numpy().astype(np.float32).tofile(raw)
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    oracle = session.run(None, {"pixel_values": pixels.numpy()})

    def compare(ours):
        out = {}
        for name, got, want in zip(["last_hidden_state", "pooler_output"], ours, oracle):
            got, want = np.asarray(got, np.float64).reshape(want.shape), np.asarray(want, np.float64)
            out[name] = {"max_abs_over_max": float(np.abs(got - want).max() / np.abs(want).max()),
                         "rel_l2": float(np.linalg.norm(got - want) / np.linalg.norm(want))}
        return out

    def letter(tool):  # a --compare-tool's name in folders and results: b, c, ...
        return "bcdefgh"[args.compare_tool.index(tool)]

    def hostrun(device, precision="bf16", batch=1, repeat=0, inputs=raw, tool=None):
        tool = tool or args.tool
        suffix = "" if tool == args.tool else "-" + letter(tool)
        folder = os.path.join(args.work, f"{device}-{precision}-{batch}{suffix}")
        cmd = [tool, graph, "--input", f"pixel_values={inputs}", "--shape", f"pixel_values={batch},3,{side},{side}",
               "--out", folder, "--device", device, "--precision", precision, "--repeat", str(repeat)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            return {"error": run.stderr.strip()[-2000:]}, None
        summary = json.loads(run.stdout)
        outputs = [np.fromfile(o["file"], np.float32) for o in summary["outputs"]]
        return summary, outputs

    result["parity"] = {}
    runs = [("cuda", "f32", None), ("cuda", "bf16", None)] + ([] if args.skip_cpu else [("cpu", "f32", None)])
    for tool in args.compare_tool:
        runs += [("cuda", "f32", tool), ("cuda", "bf16", tool)]
    for device, precision, tool in runs:
        summary, outputs = hostrun(device, precision, tool=tool)
        key = f"hostrun-{device}-{precision}" if device == "cuda" else "hostrun-cpu"
        key = key.replace("hostrun-", f"hostrun-{letter(tool)}-") if tool else key
        result["parity"][key] = compare(outputs) if outputs is not None else summary
        if outputs is not None and device == "cuda":
            result["parity"][key]["fused_attention"] = summary.get("fused_attention")
            for counter in ("fused_bias", "fused_residual", "bf16_outputs", "activations"):
                result["parity"][key][counter] = summary.get(counter)
        print(key, json.dumps(result["parity"][key]), flush=True)
    gpu_model = model.to("cuda")
    with torch.no_grad():
        bf16 = CLIPVisionModel(config).to(torch.bfloat16)
        bf16.load_state_dict(model.state_dict())
        bf16 = bf16.to("cuda").eval()
        ours = bf16(pixels.to("cuda", torch.bfloat16))
        result["parity"]["hf-bf16"] = compare([ours.last_hidden_state.float().cpu(), ours.pooler_output.float().cpu()])
    print("hf-bf16", json.dumps(result["parity"]["hf-bf16"]), flush=True)
    del gpu_model

    result["timing"] = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        batch_pixels = torch.randn(batch, 3, side, side)
        path = os.path.join(args.work, f"pixels-{batch}.bin")
        batch_pixels.numpy().astype(np.float32).tofile(path)
        entry = {}
        tools = [("hostrun", args.tool)] + [(f"hostrun_{letter(t)}", t) for t in args.compare_tool]
        for round in range(2 if args.compare_tool else 1):  # A, B, A, B: the GPU's clocks drift
            for name, tool in tools:
                summary, _ = hostrun("cuda", "bf16", batch, repeat=20, inputs=path, tool=tool)
                key = name + ("" if round == 0 else f"_round{round + 1}")
                if "run_ms" in summary:
                    ms = sorted(summary["run_ms"])
                    entry[f"{key}_ms"] = {"median": ms[len(ms) // 2], "min": ms[0]}
                    entry[f"{key}_images_per_s"] = 1000.0 * batch / ms[len(ms) // 2]
                    entry[f"{key}_arena_bytes"] = summary.get("arena_bytes")
                else:
                    entry[f"{key}_error"] = summary.get("error")
        with torch.no_grad():
            x = batch_pixels.to("cuda", torch.bfloat16)
            for _ in range(3):
                bf16(x)
            times = []
            for _ in range(20):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                bf16(x)
                stop.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(stop))
        times.sort()
        entry["hf_bf16_sdpa_ms"] = {"median": times[len(times) // 2], "min": times[0]}
        entry["hf_images_per_s"] = 1000.0 * batch / times[len(times) // 2]
        result["timing"][str(batch)] = entry
        print("batch", batch, json.dumps(entry), flush=True)
    json.dump(result, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
