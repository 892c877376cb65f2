#!/usr/bin/env bash
# The host is model-agnostic: a folder reaches the manifest its config.json's
# architecture, quantization format and the device select (the built-in
# manifest table), or a clear "no plugin in this build handles ..." that lists
# the table; never an error about some model family's missing fields. Also
# --device with --manifest (applied or refused), [serves], and manifests whose
# role tables the host would not use.
# Usage: model_folders.sh HOSTRUN TINY_MODEL_DIR SOURCE_DIR TEST_PLUGIN_DIR
set -u
hostrun=$1 tiny=$2 source=$3 test_plugins=$4
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0 passes=0
expect() {  # expect NAME PATTERN FILE
  if grep -qF -- "$2" "$3"; then echo "ok: $1"; passes=$((passes+1)); else echo "FAIL: $1: '$2' not in:"; cat "$3"; failures=$((failures+1)); fi
}
expect_not() {  # expect_not NAME PATTERN FILE
  if grep -qiE -- "$2" "$3"; then echo "FAIL: $1: '$2' found in:"; cat "$3"; failures=$((failures+1)); else echo "ok: $1"; passes=$((passes+1)); fi
}
expect_status() {  # expect_status NAME WANT GOT
  if [ "$2" = "$3" ]; then echo "ok: $1"; passes=$((passes+1)); else echo "FAIL: $1: exit status $3, expected $2"; failures=$((failures+1)); fi
}
# A folder with the tiny model's weights and tokenizer and another config.json.
folder() {  # folder NAME CONFIG_JSON
  mkdir -p "$work/$1"
  for f in "$tiny"/*.safetensors "$tiny"/tokenizer.json "$tiny"/tokenizer_config.json; do ln -sf "$f" "$work/$1/"; done
  printf '%s\n' "$2" >"$work/$1/config.json"
}
chat() { printf 'hello\n\n' | "$hostrun" chat "$@" --max-new-tokens 2; }

folder qwen2vl '{"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
  "text_config": {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28},
  "vision_config": {"model_type": "qwen2_vl", "depth": 32, "patch_size": 14}}'
chat "$work/qwen2vl" --device cpu >"$work/qwen2vl.out" 2>&1; expect_status "a folder no manifest serves is refused" 1 $?
expect "naming the architecture, format and device" \
  "no plugin in this build handles Qwen2VLForConditionalGeneration with unquantized weights on cpu" "$work/qwen2vl.out"
expect "and listing the table" "the built-in manifest table: llama3-cpu-awq: LlamaForCausalLM x awq x cpu; llama3-cpu-fp8: LlamaForCausalLM x fp8 x cpu; llama3-cpu: LlamaForCausalLM x none x cpu" "$work/qwen2vl.out"
expect "LLaVA's row too" "llava-llama3-cpu: LlavaForConditionalGeneration x none x cpu" "$work/qwen2vl.out"
expect_not "with no word of Llama's fields" "hidden_size|num_attention_heads|intermediate_size|vocab_size" "$work/qwen2vl.out"
# A LLaVA folder reaches its CPU manifest, and on cuda its CUDA one (here refused: no GPU in CI, or no
# llama_cuda in a build without CUDA).
folder llava '{"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 128256,
  "text_config": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32},
  "vision_config": {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14}}'
chat "$work/llava" --device cuda >"$work/llava.out" 2>&1; expect_status "a LLaVA folder on cuda without a GPU is refused" 1 $?
expect "by the CUDA LLaVA manifest" "--device cuda: manifest llava-llama3-cuda: " "$work/llava.out"
chat "$work/llava" --device cpu >"$work/llava-cpu.out" 2>&1; expect_status "a LLaVA folder of Llama weights is refused on cpu" 1 $?
expect "by its manifest's model, naming LLaVA's tensor name" "checkpoint has no tensor 'language_model.model.embed_tokens.weight'" "$work/llava-cpu.out"

tiny_config=$(cat "$tiny/config.json")
with_quantization() { python3 -c 'import json,sys; c=json.loads(sys.argv[1]); c["quantization_config"]=json.loads(sys.argv[2]); print(json.dumps(c))' "$tiny_config" "$1"; }
folder awq "$(with_quantization '{"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}')"
# The awq manifest takes it (quantization_config says awq), and the awq quantizer finds dense weights where
# AutoAWQ's packed tensors should be.
chat "$work/awq" >"$work/awq.out" 2>&1; expect_status "an AWQ config over dense weights is refused" 1 $?
expect "naming the missing packed tensor" "the quantizer (awq) could not build model.layers.0.self_attn.q_proj" "$work/awq.out"
expect "and the tensor" "checkpoint has no tensor 'model.layers.0.self_attn.q_proj.qweight'" "$work/awq.out"
# On cuda the AWQ folder reaches the CUDA AWQ manifest (here refused: no GPU in CI, or no llama_cuda in a build
# without CUDA).
chat "$work/awq" --device cuda >"$work/awq-cuda.out" 2>&1; expect_status "an AWQ folder on cuda without a GPU is refused" 1 $?
expect "by the CUDA AWQ manifest" "--device cuda: manifest llama3-cuda-awq: " "$work/awq-cuda.out"
folder fp8 "$(with_quantization '{"quant_method": "fp8", "activation_scheme": "dynamic"}')"
chat "$work/fp8" --device cpu >"$work/fp8.out" 2>&1; expect_status "an FP8 config over dense weights is refused" 1 $?
expect "by the fp8 quantizer, naming the tensor" "tensor 'model.layers.0.self_attn.q_proj.weight': expected an F8_E4M3 matrix [out, in], found bf16" "$work/fp8.out"
chat "$work/fp8" --device cuda >"$work/fp8-cuda.out" 2>&1; expect_status "an FP8 folder on cuda without a GPU is refused" 1 $?
expect "by the CUDA FP8 manifest" "--device cuda: manifest llama3-cuda-fp8: " "$work/fp8-cuda.out"
folder nothing '{"model_type": "llama"}'
chat "$work/nothing" >"$work/nothing.out" 2>&1; expect_status "a config without architectures is refused" 1 $?
expect "naming the key" "key 'architectures'" "$work/nothing.out"

# --manifest: --device is applied to its [engine] device, and refused when its model plugin cannot run there.
cpu_manifest="$source/manifests/llama3-cpu.toml"
chat "$tiny" --manifest "$cpu_manifest" --device cuda >"$work/applied.out" 2>&1; expect_status "--device cuda with a CPU manifest is refused" 1 $?
expect "by the manifest's own model plugin" "plugin 'llama_cpu'" "$work/applied.out"
expect "saying it cannot run on cuda" "cannot run on cuda" "$work/applied.out"
chat "$tiny" --manifest "$cpu_manifest" --device cpu >"$work/cpu.out" 2>&1; expect_status "--device cpu with the CPU manifest runs" 0 $?
# [serves]: a manifest is held to the folders it says it runs.
chat "$work/awq" --manifest "$cpu_manifest" >"$work/serves.out" 2>&1; expect_status "the CPU manifest refuses an AWQ folder" 1 $?
expect "through its [serves] table" "runs LlamaForCausalLM with none, but $work/awq is LlamaForCausalLM with awq" "$work/serves.out"

# [quantizer] reaches the model through the runtime: the test quantizer's
# int8 layers run a real chat; a folder of another format is refused by name.
sed 's/^\[model\]/[quantizer]\nplugin = "test_rtn_int8"\n\n[model]/' "$cpu_manifest" | grep -v '^\[serves\]' \
  | grep -v '^architectures\|^quantization' >"$work/rtn.toml"
chat "$tiny" --manifest "$work/rtn.toml" --plugin-dir "$test_plugins" --log-level info >"$work/rtn.out" 2>&1
expect_status "a manifest with a [quantizer] runs" 0 $?
expect "and says so" "quantizer test_rtn_int8" "$work/rtn.out"
chat "$work/awq" --manifest "$work/rtn.toml" --plugin-dir "$test_plugins" >"$work/rtn-awq.out" 2>&1
expect_status "an AWQ folder with a quantizer of another format is refused" 1 $?
expect "naming both formats" "quant_method is \"awq\", but the [quantizer] of $work/rtn.toml ('test_rtn_int8') reads \"rtn-int8\"" "$work/rtn-awq.out"

# Tables the host would validate and then never use are errors with file:line.
cat >"$work/second.toml" <<'TOML'
[model]
plugin = "llama_cpu"
[draft]
role = "model"
plugin = "llama_cpu"
TOML
"$hostrun" manifest check "$work/second.toml" >"$work/second.out" 2>&1; expect_status "a second model instance is refused" 1 $?
expect "with file:line" "second.toml:3:2: table [draft] is a second model instance" "$work/second.out"
printf '[model]\nplugin = "llama_cpu"\n[visoin]\nplugin = "x"\n' >"$work/typo.toml"
"$hostrun" manifest check "$work/typo.toml" >"$work/typo.out" 2>&1; expect_status "an unknown table is refused" 1 $?
expect "with file:line and the tables there are" "typo.toml:3:2: unknown table [visoin]: expected a role table (model, quantizer, kv_cache, tokenizer, vision, frontend)" "$work/typo.out"

"$hostrun" manifest table >"$work/table.out" 2>&1; expect_status "manifest table" 0 $?
expect "lists the CPU row" "llama3-cpu" "$work/table.out"
expect "and the CUDA row" "llama3-cuda" "$work/table.out"

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
