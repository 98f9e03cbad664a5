#!/usr/bin/env bash
# Checks one line of a skygit batch file (a post, edit, delete,
# conversation or call) with the real `ssh-keygen -Y verify`, without skygit:
#
#   scripts/verify-line.sh ALLOWED_SIGNERS < line
#
# ALLOWED_SIGNERS is the room's .messages/allowed_signers (on a GitHub room,
# make one from https://github.com/USER.keys: one line per key,
# `USER namespaces="skygit" KEY`). The signed statement is rebuilt from the
# line with jq (the line's fields in a fixed order, without index, term,
# time and the signature itself); the signature is the line's `signature`,
# armored again. Needs jq and ssh-keygen (openssh-client).
set -euo pipefail

signers=${1:?usage: verify-line.sh ALLOWED_SIGNERS < line}
line=$(cat)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

printf '%s' "$line" | jq -cj '
  if .kind == "post" then {kind, conversation, request, sender, at, content}
    + (if .attachments then {attachments} else {} end)
  elif .kind == "edit" then {kind, message, request, sender, at, content}
  elif .kind == "delete" then {kind, message, request, sender, at}
  elif .kind == "call" then {kind, conversation, request, sender, at, call}
  else {kind, conversation, request, sender, at, title} end' >"$tmp/statement"
{
    echo "-----BEGIN SSH SIGNATURE-----"
    printf '%s' "$line" | jq -r '.signature // ""' | fold -w 70
    echo "-----END SSH SIGNATURE-----"
} >"$tmp/signature"
sender=$(printf '%s' "$line" | jq -r .sender)
ssh-keygen -Y verify -f "$signers" -I "$sender" -n skygit -s "$tmp/signature" <"$tmp/statement"
