#!/usr/bin/env bash
# npm test: build and typecheck (integration tests run the built apps in dist/), then every
# test file with node's test runner, against real nats-server, PostgreSQL, runc and ctr.
# One file at a time: integration files start their own servers and stacks on a 2-core box.
#   npm test                      all of libs/*/test, apps/*/test, test/**
#   npm test -- <files...>        only these (after a build)
set -euo pipefail
cd "$(dirname "$0")/.."
# Tests and the stacks they start run on the node npm installed, as `npm start` does.
PATH="$PWD/node_modules/.bin:$PATH"
node tools/build.mjs --typecheck
shopt -s nullglob globstar
files=()
for a in "$@"; do [[ "$a" == *.test.ts ]] && files+=("$a"); done
opts=()
for a in "$@"; do [[ "$a" != *.test.ts ]] && opts+=("$a"); done
if [ ${#files[@]} -eq 0 ]; then files=(libs/*/test/*.test.ts apps/*/test/*.test.ts test/**/*.test.ts); fi
exec node --import tsx --test --test-concurrency=1 --test-reporter=spec "${opts[@]}" "${files[@]}"
