#!/usr/bin/env bash
# The small model hostrun ships, as `scripts/run.sh` runs it (`hostrun chat`
# with no MODEL_DIR, on the CPU), asked a few fixed questions, each in a fresh
# conversation, greedily. Not an exact-string test (a retrained model words
# things differently): each reply must be English made of dictionary words
# (at least 90% of its words in WordNet's, models/small/words.txt) and be
# about the question (share a word with the question's subject or with
# WordNet's definition of it, listed here).
#   small_model.sh HOSTRUN WORDS_TXT
set -euo pipefail
hostrun=$1 words=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# question|words that show the reply is about it (the subject, words of its WordNet definitions)
cat > "$out/cases" <<'CASES'
What does abate mean?|abate abated abates less lessen intense intensity amount decrease subside soften strong
What kind of thing is a violin?|violin violins fiddle instrument bowed stringed string
What is the opposite of happy?|happy unhappy sad happiness
Give an example of generous.|generous generosity giving liberal
hello there|hello hi greeting
CASES
input=""
while IFS='|' read -r question _; do input+="$question"$'\n\nend\n\n'; done < "$out/cases"
printf '%s' "$input" | "$hostrun" chat --device cpu --temperature 0 --max-new-tokens 80 > "$out/chat.txt" 2> "$out/chat.err" ||
  { echo "hostrun chat failed:"; cat "$out/chat.err"; exit 1; }
grep -q "small dictionary model hostrun ships" "$out/chat.err" || { echo "not the shipped small model:"; cat "$out/chat.err"; exit 1; }
python3 - "$out/chat.txt" "$out/cases" "$words" <<'PY'
import re, sys
transcript, cases, words = (open(p, encoding="utf-8").read() for p in sys.argv[1:4])
dictionary = set(words.split())
cases = [line.split("|") for line in cases.splitlines() if line]
# Each record after a prompt marker: the echoed question and the reply, or the reset notice.
records = [r for r in transcript.split(">>> ")[1:] if r.strip() and not r.startswith("(conversation reset)")]
failures = 0
for (question, related), record in zip(cases, records):
    asked, _, reply = record.partition("\n")
    reply = reply.replace("double enter to end input", "").strip()
    found = [w.lower() for w in re.findall(r"[A-Za-z]+", reply)]
    known = [w for w in found if w in dictionary]
    about = set(found) & set(related.split())
    ok = asked.strip() == question and len(found) >= 3 and len(known) >= 0.9 * len(found) and about
    failures += not ok
    print(f"{'ok' if ok else 'FAIL'}: {question!r} -> {reply!r} "
          f"({len(known)}/{len(found)} dictionary words; about it: {sorted(about)})")
if len(records) < len(cases):
    print(f"FAIL: {len(records)} replies for {len(cases)} questions:\n{transcript}")
    failures += 1
sys.exit(1 if failures else 0)
PY
echo "small model: ok"
