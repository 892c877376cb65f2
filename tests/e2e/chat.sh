#!/usr/bin/env bash
# `hostrun chat` as people use it: through a pipe (Enter twice sends, `end`
# resets, `exit` quits, end of input ends) and in a real terminal under tmux.
# Usage: chat.sh HOSTRUN MODEL_DIR
set -u
hostrun=$1 model=$2
work=$(mktemp -d); trap 'tmux kill-server 2>/dev/null; rm -rf "$work"' EXIT
failures=0 passes=0
ok() { echo "ok: $1"; passes=$((passes+1)); }
fail() { echo "FAIL: $1"; failures=$((failures+1)); }
# Seeded sampling, not greedy: a random-weight model's argmax tends to repeat
# one token whatever the context, which would hide a history bug.
chat() { "$hostrun" chat "$model" --temperature 1 --top-k 0 --top-p 1 --seed 7 --max-new-tokens 12 "$@"; }
# reply FILE N PROMPT_LINES: the reply to the Nth prompt, as printed (the
# prompt is echoed first when stdin is a pipe).
reply() {
  python3 - "$@" <<'PY'
import sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
record = text.split(">>> ")[int(sys.argv[2])]
body = record.split("\n", int(sys.argv[3]))[-1]
print(repr(body.removesuffix("\n\ndouble enter to end input ")))
PY
}

printf 'Tell me about the sea.\n\n' | chat >"$work/alone" 2>"$work/alone.err"
[ $? -eq 0 ] && ok "end of input ends the chat" || { fail "chat exited non-zero"; cat "$work/alone.err"; }
grep -q "hostrun chat:" "$work/alone" && ok "banner" || fail "no banner"
alone=$(reply "$work/alone" 1 1)
[ "$alone" != "''" ] && ok "a reply streams out: '$alone'" || { fail "no reply"; cat "$work/alone"; }

printf 'First question,\non two lines.\n\nend\n\nTell me about the sea.\n\nexit\n\nnot sent\n\n' | chat >"$work/reset" 2>&1
[ $? -eq 0 ] && ok "exit quits with status 0" || fail "exit status"
grep -q "(conversation reset)" "$work/reset" && ok "end resets" || fail "no reset message"
after_reset=$(reply "$work/reset" 3 1)
[ "$after_reset" = "$alone" ] && ok "after 'end' the reply equals a fresh conversation's" \
  || fail "reply after reset '$after_reset' differs from a fresh one '$alone'"
grep -q "not sent" "$work/reset" && fail "input after exit was sent" || ok "nothing after exit is sent"

printf 'First question,\non two lines.\n\nTell me about the sea.\n\n' | chat >"$work/multi" 2>&1
with_history=$(reply "$work/multi" 2 1)
[ "$with_history" != "$alone" ] && ok "without 'end' the history changes the reply" \
  || fail "history made no difference ('$with_history')"

# A conversation that outgrows the session is refused by its code, with the way out, and the chat goes on.
long_prompt=$(python3 -c "print(' '.join(['word'] * 200))")
printf '%s\n\nTell me about the sea.\n\n' "$long_prompt" | chat --session-len 64 >"$work/long" 2>&1
[ $? -eq 0 ] && ok "a refused prompt does not end the chat" || fail "chat exited after a refused prompt"
grep -q "no longer fits; 'end' starts a new one" "$work/long" && ok "an over-long prompt says how to go on" \
  || { fail "no hint for an over-long prompt"; cat "$work/long"; }
[ "$(reply "$work/long" 2 1)" != "''" ] && ok "the next prompt is answered" || fail "no reply after the refusal"

# A real terminal.
if command -v tmux >/dev/null; then
  tmux new-session -d -s chat -x 200 -y 50 "$hostrun chat $model --temperature 0 --max-new-tokens 12; echo CHAT-ENDED; sleep 30"
  wait_for() { for _ in $(seq 1 100); do tmux capture-pane -p -t chat | grep -qF -- "$1" && return 0; sleep 0.2; done; return 1; }
  wait_for "input >>>" && ok "tmux: prompt shown" || fail "tmux: no prompt"
  tmux send-keys -t chat "Tell me about the sea." Enter Enter
  replied() { for _ in $(seq 1 100); do [ "$(tmux capture-pane -p -t chat | grep -o "input >>>" | wc -l)" -ge 2 ] && return 0; sleep 0.2; done; return 1; }
  replied && ok "tmux: the reply streams and the next prompt follows" || { fail "tmux: no reply"; tmux capture-pane -p -t chat; }
  tmux send-keys -t chat "exit" Enter Enter
  wait_for "CHAT-ENDED" && ok "tmux: exit quits" || fail "tmux: still running after exit"
else
  fail "tmux is not installed (scripts/install-deps.sh --test installs it)"
fi
echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
