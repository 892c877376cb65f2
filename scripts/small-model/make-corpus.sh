#!/usr/bin/env bash
# Makes the small model's corpus from WordNet 3.0 (Debian package wordnet-base;
# its licence is in models/small/README.md): fetches the package without
# installing it (apt-get download, then dpkg -x into .deps/wordnet) and runs
# corpus.py on its data files.
#   make-corpus.sh OUT_DIR      -> OUT_DIR/{pretrain.txt,chat.jsonl,heldout.txt,words.txt}
# Debian 12 has wordnet-base 1:3.0-37; another version may give another corpus
# (then models/small/heldout.txt and words.txt no longer match it), so it is named.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:?usage: make-corpus.sh OUT_DIR}
cache="$root/.deps/wordnet"
expected_version="1:3.0-37"
data="$cache/root/usr/share/wordnet"

if [ ! -s "$data/data.noun" ]; then
  mkdir -p "$cache"
  # apt-get download needs the package lists; a fresh machine may not have them yet.
  if ! (cd "$cache" && apt-get download wordnet-base >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$cache" && apt-get download wordnet-base >/dev/null)
  fi
  deb=$(ls "$cache"/wordnet-base_*.deb | head -n1)
  dpkg -x "$deb" "$cache/root"
fi
deb=$(ls "$cache"/wordnet-base_*.deb | head -n1)
version=$(dpkg-deb -f "$deb" Version)
if [ "$version" != "$expected_version" ]; then
  echo "make-corpus: wordnet-base is $version, the shipped model was trained on $expected_version; the corpus may differ" >&2
fi
python3 "$root/scripts/small-model/corpus.py" "$data" "$out"
