#!/usr/bin/env bash
# Regenerates libs/api/src/gen from containerd 1.6.20's own protos (Debian's
# golang-github-containerd-containerd-dev) and flotilla's proto/.
# Usage: tools/gen-proto.sh [OUT_DIR]   (default: libs/api/src/gen)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-libs/api/src/gen}
GO=/usr/share/gocode/src
CTRD=github.com/containerd/containerd
for f in "$GO/$CTRD/api/services/version/v1/version.proto" "$GO/github.com/gogo/protobuf/gogoproto/gogo.proto"; do
  [ -f "$f" ] || { echo "missing $f: apt-get install golang-github-containerd-containerd-dev" >&2; exit 1; }
done
command -v protoc >/dev/null || { echo "missing protoc: apt-get install protobuf-compiler" >&2; exit 1; }
rm -rf "$OUT"; mkdir -p "$OUT"
files=$(cd "$GO" && ls $CTRD/api/services/*/v1/*.proto $CTRD/api/services/ttrpc/events/v1/events.proto \
  $CTRD/api/events/*.proto $CTRD/api/types/*.proto $CTRD/api/types/task/task.proto \
  $CTRD/runtime/v2/task/shim.proto $CTRD/runtime/v2/runc/options/oci.proto)
# proto/ holds flotilla's own messages (node agent API, stream framing).
own=$(cd proto && ls flotilla/*.proto 2>/dev/null || true)
protoc --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto \
  -I "$GO" -I "$GO/github.com/gogo/protobuf" -I "$GO/github.com/gogo/protobuf/protobuf" \
  -I "$GO/github.com/gogo/googleapis" -I proto \
  --ts_proto_out="$OUT" \
  --ts_proto_opt=outputServices=generic-definitions,esModuleInterop=true,env=node,forceLong=number,useDate=false,outputJsonMethods=false,outputPartialMethods=true,useOptionals=none,exportCommonSymbols=false,outputTypeRegistry=false \
  $files $own
# Drop the generated copies of gogo's option protos: nothing at run time uses them.
rm -rf "$OUT/gogoproto" "$OUT/github.com/containerd/containerd/protobuf" "$OUT/google/protobuf/descriptor.ts"
