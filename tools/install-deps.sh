#!/usr/bin/env bash
# Installs what flotilla needs on a Debian 12 machine, as root, skipping what is present;
# then npm dependencies when node_modules is missing or older than package-lock.json.
# Used by `npm start` (tools/start.sh) and CI (.ci/run).
#   containerd      ctr and containerd-shim-runc-v2 (its daemon is never started by flotilla;
#                   tests start it on a private socket only as a reference to compare with)
#   runc, nats-server, postgresql (its binaries: flotilla runs a private cluster),
#   busybox-static + umoci (test images), attr (setfattr), psmisc, zstd (tar+zstd layers),
#   golang-go       builds containerd's Go testsuites and client cases (tools/gotest)
#   tmux            drives ctr run -t / exec -t interactively in the task tests
#   protobuf-compiler + golang-github-containerd-{containerd,ttrpc}-dev (npm run gen, and
#                   containerd's source as the behaviour reference)
set -euo pipefail
PKGS=(containerd runc nats-server postgresql busybox-static umoci attr psmisc zstd protobuf-compiler golang-go
      golang-github-containerd-containerd-dev golang-github-containerd-ttrpc-dev tmux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "missing Debian packages (install as root): ${missing[*]}" >&2; exit 1; fi
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# Debian's containerd package enables its daemon under systemd; flotilla must not run it.
if command -v systemctl >/dev/null && systemctl is-active --quiet containerd 2>/dev/null; then
  systemctl disable --now containerd >/dev/null 2>&1 || true
fi
# npm dependencies, when missing or installed from another package-lock.json.
cd "$(dirname "$0")/.."
stamp=node_modules/.flotilla-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  npm ci --no-audit --no-fund >&2
  echo "$want" > "$stamp"
fi
