#!/usr/bin/env bash
# `hostrun plugins` and `hostrun manifest check`, run as a user would.
# Usage: cli_plugins_and_manifests.sh HOSTRUN TEST_PLUGIN_DIR DATA_DIR
set -u
hostrun=$1 plugin_dir=$2 data=$3
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0 passes=0
expect() {  # expect NAME PATTERN FILE
  if grep -qF -- "$2" "$3"; then echo "ok: $1"; passes=$((passes+1)); else echo "FAIL: $1: '$2' not in:"; cat "$3"; failures=$((failures+1)); fi
}
expect_status() {  # expect_status NAME WANT GOT
  if [ "$2" = "$3" ]; then echo "ok: $1"; passes=$((passes+1)); else echo "FAIL: $1: exit status $3, expected $2"; failures=$((failures+1)); fi
}

"$hostrun" --help >"$work/help" 2>&1; expect_status "--help exits 0" 0 $?
expect "--help lists plugins" "plugins" "$work/help"
expect "--help lists manifest" "manifest" "$work/help"
"$hostrun" manifest check --help >"$work/mhelp" 2>&1
expect "manifest check --help names --set" "--set" "$work/mhelp"

"$hostrun" plugins --plugin-dir "$plugin_dir" >"$work/plugins" 2>&1; expect_status "plugins exits 0" 0 $?
expect "lists the fixture plugin" "fixture" "$work/plugins"
expect "lists its roles" "tokenizer,frontend,vision" "$work/plugins"
abi=$("$hostrun" --version | sed -n 's/.*plugin ABI \([0-9]*\).*/\1/p')
expect "refuses the other ABI, naming both versions and the file" \
  "hostrun_abi_mismatch.so: built for plugin ABI version 999, but this hostrun has ABI version ${abi:-?}" "$work/plugins"
expect "refuses a library without the entry point" "hostrun_not_a_plugin.so: not a hostrun plugin" "$work/plugins"

HOSTRUN_PLUGIN_PATH="$plugin_dir" "$hostrun" plugins --json >"$work/json" 2>&1
expect "HOSTRUN_PLUGIN_PATH is searched" '"name": "fixture"' "$work/json"
expect "--json lists settings" '"key": "budget"' "$work/json"

"$hostrun" manifest check "$data/fixture_ok.toml" --plugin-dir "$plugin_dir" >"$work/ok" 2>&1
expect_status "a good manifest passes" 0 $?
expect "prints the wiring" "[tokenizer] tokenizer -> plugin 'fixture'" "$work/ok"
expect "prints defaults" "add_bos = true    # default" "$work/ok"

"$hostrun" manifest check "$data/fixture_typo.toml" --plugin-dir "$plugin_dir" >"$work/typo" 2>&1
expect_status "a manifest with a typo fails" 1 $?
expect "the typo is named with file, line and key" "fixture_typo.toml:6:1: unknown key 'bugdet' in [tokenizer]" "$work/typo"

"$hostrun" manifest check "$data/fixture_ok.toml" --plugin-dir "$plugin_dir" --set tokenizer.budget=1000 >"$work/range" 2>&1
expect_status "an override out of range fails" 1 $?
expect "the override is named" "--set tokenizer.budget=1000: tokenizer.budget = 1000 is out of range [1, 100]" "$work/range"

printf '[model]\nplugin = "llama_cpu"\n[kv_cache]\nplugin = "kv_cpu"\n[tokenizer]\nplugin = "fixture"\nfile = "v.txt"\n[vision]\nplugin = "fixture"\ntokens_per_image = 576\n' >"$work/vision.toml"
"$hostrun" manifest check "$work/vision.toml" --plugin-dir "$plugin_dir" >"$work/vision" 2>&1
expect_status "a manifest with a [vision] table passes" 0 $?
expect "and shows the vision instance" "[vision] vision -> plugin 'fixture'" "$work/vision"
expect "with its settings" "tokens_per_image = 576" "$work/vision"

# manifest check runs what chat runs: what chat would refuse, check refuses.
check_refuses() {  # check_refuses NAME PATTERN TOML_TEXT
  printf '%b' "$3" >"$work/refuse.toml"
  "$hostrun" manifest check "$work/refuse.toml" --plugin-dir "$plugin_dir" >"$work/refuse.out" 2>&1
  expect_status "manifest check refuses $1" 1 $?
  expect "naming why ($1)" "$2" "$work/refuse.out"
}
base='[model]\nplugin = "llama_cpu"\n[kv_cache]\nplugin = "kv_cpu"\n[tokenizer]\nplugin = "fixture"\nfile = "v"\n'
check_refuses "a KV page dtype the policy lacks" "kv_cpu: setting 'dtype'" \
  '[model]\nplugin = "llama_cpu"\n[kv_cache]\nplugin = "kv_cpu"\ndtype = "f8"\n[tokenizer]\nplugin = "fixture"\nfile = "v"\n'
check_refuses "an unknown device" "engine.device 'tpu': expected cpu or cuda" "$base[engine]\ndevice = \"tpu\"\n"
check_refuses "an unknown chat template base" "mistral" "$base[chat_template]\nbase = \"mistral\"\n"
check_refuses "an empty file" "has no [model], [kv_cache], [tokenizer] tables" ""
check_refuses "no [model]" "has no [model] table" '[kv_cache]\nplugin = "kv_cpu"\n[tokenizer]\nplugin = "fixture"\nfile = "v"\n'

# A truncated library in a plugin folder is refused with the reason; every command goes on.
built_in=$(dirname "$hostrun")/../lib/hostrun/plugins
mkdir -p "$work/broken"
cp "$plugin_dir/hostrun_fixture.so" "$work/broken/hostrun_cut.so"
truncate -s $(( $(stat -c%s "$work/broken/hostrun_cut.so") / 2 )) "$work/broken/hostrun_cut.so"
"$hostrun" plugins --plugin-dir "$work/broken" >"$work/broken.out" 2>&1; expect_status "plugins survives a truncated library" 0 $?
expect "and names why it was refused" "hostrun_cut.so: truncated: a loadable segment ends at byte" "$work/broken.out"
# A tokenizer file that would never end (a device, a FIFO) is refused, not read.
mkfifo "$work/fifo.json"
for bad in /dev/zero "$work/fifo.json"; do
  echo hi | timeout 20 "$hostrun" tokenize "$bad" >"$work/bad_tok.out" 2>&1
  expect_status "tokenize $bad ends with an error" 1 $?
  expect "saying why" "is not a regular file" "$work/bad_tok.out"
done
# A plugin that takes a shipped plugin's name is reported, by plugins and at start.
if [ -f "$built_in/hostrun_hf_tokenizer.so" ]; then
  mkdir -p "$work/shadow"; cp "$built_in/hostrun_hf_tokenizer.so" "$work/shadow/"
  "$hostrun" plugins --plugin-dir "$work/shadow" >"$work/shadow.out" 2>&1
  expect "plugins reports the shadowed one" "which shadows this one" "$work/shadow.out"
fi

"$hostrun" frobnicate >"$work/unknown" 2>&1
expect_status "an unknown command fails" 1 $(( $? != 0 ))
expect "and says so" "frobnicate" "$work/unknown"

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
