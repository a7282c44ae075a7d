#!/usr/bin/env bash
# Here, after the lent hosts: every call's OUT folder (thin.tgz and, if packed, parts/) unpacked and
# merged into one store, then the pairs scored that need it (pairs whose artifacts came back, and
# thin pairs whose records show an exact match: docs/experiment.md, "Merging stores of several hosts").
#
#   tools/stage1_collect.sh STORE OUT [OUT ...]
#
# An OUT is a call's folder (thin.tgz, maybe parts/) or a thin store archive on its own (a call's
# thin.tgz repacked, e.g. `.tar.xz`, as kept in git between sessions). OUTs are read, never
# changed; STORE may already hold earlier calls (the merge adds the new jobs and keeps the rows
# computed from the results it holds).
set -euo pipefail
store=$1
shift
[ $# -ge 1 ] || { echo "usage: tools/stage1_collect.sh STORE OUT [OUT ...] (an OUT holds thin.tgz)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ditproof=(python3 -m ditproof.cli.main experiment)
hosts=()
for out in "$@"; do
  host="$work/host${#hosts[@]}"
  mkdir -p "$host"
  if [ -f "$out" ]; then
    tar xf "$out" -C "$host" || { echo "$out: not a tar archive; allowed: a thin store archive" >&2; exit 2; }
    hosts+=("$host")
    continue
  fi
  [ -f "$out/thin.tgz" ] || { echo "$out: no thin.tgz; allowed: a folder tools/stage1_host.sh wrote, or an archive" >&2; exit 2; }
  tar xzf "$out/thin.tgz" -C "$host"
  if compgen -G "$out/parts/artifacts.tgz.part-*" > /dev/null; then
    cat "$out"/parts/artifacts.tgz.part-* | tar xzf - -C "$host"
  fi
  hosts+=("$host")
done
"${ditproof[@]}" merge --store "$store" "${hosts[@]}"
"${ditproof[@]}" score --store "$store" | tail -n 2
