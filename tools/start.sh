#!/usr/bin/env bash
# npm start: install what is missing, build, then run the launcher, which prints
# `ready: <socket>` on stdout once ctr can connect (everything else goes to stderr).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "npm start must run as root (runc, mounts, shims)" >&2; exit 1; fi
bash tools/install-deps.sh
# The Node.js LTS that npm installed with the dependencies (package.json optionalDependencies),
# when there is one for this machine; otherwise the system's node.
PATH="$PWD/node_modules/.bin:$PATH"
node tools/build.mjs >&2
# FLOTILLA_SOURCE_MAPS=1: stack traces mapped to the TypeScript sources (README).
if [ "${FLOTILLA_SOURCE_MAPS:-}" = 1 ]; then exec node --enable-source-maps dist/tools/launcher.js; fi
exec node dist/tools/launcher.js
