#!/usr/bin/env bash
# The layering rule (docs/architecture.md), checked on the sources:
#   plugins -> sdk (+ kernels, + plugins/llama_common for the Llama plugins,
#              + plugins/image_common for the vision plugins)
#   core    -> sdk
#   kernels -> nothing of ours
# A plugin that includes a core/ header, or links a core library, fails; so
# does core reaching into plugins/ or kernels/. Host-side programs that use
# both (tools/) are outside plugins/ and core/, so no rule names them.
#   layering.sh SOURCE_DIR
set -uo pipefail
root=${1:?usage: layering.sh SOURCE_DIR}
cd "$root" || exit 2
problems=0
fail() { echo "layering: $*" >&2; problems=$((problems + 1)); }

sources() { find "$@" -type f \( -name '*.cpp' -o -name '*.hpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' \) 2>/dev/null; }
quoted_includes() { grep -Hn '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$1" | sed 's/^\([^:]*\):\([0-9]*\):.*"\([^"]*\)".*/\1:\2 \3/'; }

# Plugin code (every folder under plugins/, llama_common's library included).
while read -r file; do
  while read -r where path; do
    [ -z "$path" ] && continue
    if [ -e "core/$path" ] || [[ "$path" == core/* ]] || [[ "$path" == ../* && "$path" == *core/* ]]; then
      fail "$where includes \"$path\", a core/ header (plugins see the host only through sdk/)"
    fi
    if [[ "$path" == llama_common/* ]]; then
      plugin=${file#plugins/}; plugin=${plugin%%/*}
      case "$plugin" in llama_common|llama_cpu|llama_cuda) ;; *)
        fail "$where includes \"$path\": only the Llama plugins link plugins/llama_common" ;;
      esac
    fi
  done < <(quoted_includes "$file")
done < <(sources plugins)

# What plugin targets link.
while read -r cmake; do
  if grep -nE 'hostrun::(core|checkpoint)\b|hostrun_core|hostrun_checkpoint' "$cmake" | grep -v '^\s*#' >/dev/null; then
    fail "$cmake links a core library: $(grep -nE 'hostrun::(core|checkpoint)\b' "$cmake" | head -1)"
  fi
done < <(find plugins -name CMakeLists.txt)

# The host: sdk/ only.
while read -r file; do
  while read -r where path; do
    [ -z "$path" ] && continue
    if [[ "$path" == llama_common/* || "$path" == image_common/* || "$path" == onnx_vision/* || "$path" == ref/* ||
          "$path" == cuda/* ||
          "$path" == *plugins/* ]]; then
      fail "$where includes \"$path\" (core depends on sdk/ only)"
    fi
  done < <(quoted_includes "$file")
done < <(sources core)
if grep -rnE 'hostrun::(llama_common|image_common|kernels_ref|kernels_cuda)|hostrun_(llama|image)_common' core --include=CMakeLists.txt >/dev/null; then
  fail "core links a plugin-side library: $(grep -rnE 'hostrun::(llama_common|image_common|kernels_ref|kernels_cuda)' core --include=CMakeLists.txt | head -1)"
fi
# No model-side plugin (model, KV cache, quantizer, vision encoder) named in
# the host's code as a string it would look up: it finds them through the
# manifests and their table. (Frontends are what the commands run, by name.)
for plugin in $(find plugins -mindepth 1 -maxdepth 1 -type d -printf '%f\n'); do
  grep -rqE 'role_entry<(hostrun::)?(Model|KvCachePolicy|Quantizer|VisionEncoder)\b' "plugins/$plugin" || continue
  if grep -rn "\"$plugin\"" core --include=*.cpp --include=*.hpp >/dev/null; then
    fail "core names the plugin \"$plugin\": $(grep -rn "\"$plugin\"" core --include=*.cpp --include=*.hpp | head -2)"
  fi
done

# kernels: nothing of ours (not even the SDK).
while read -r file; do
  while read -r where path; do
    [ -z "$path" ] && continue
    if [[ "$path" == hostrun/* || -e "core/$path" ]]; then fail "$where includes \"$path\" (kernels depend on nothing of ours)"; fi
  done < <(quoted_includes "$file")
done < <(sources kernels)

if [ "$problems" -gt 0 ]; then
  echo "layering: $problems problem(s)" >&2
  exit 1
fi
echo "layering: plugins -> sdk (+ kernels, + llama_common), core -> sdk, kernels -> nothing: ok"
