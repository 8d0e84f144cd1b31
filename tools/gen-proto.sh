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
# ts-proto decodes a bytes field as Buffer.from(reader.bytes()), a copy of every byte (each
# 1 MiB content Write and Read message was copied once more by every process it passed).
# Decode it as a view into the input instead: the message then shares, and keeps alive, the
# buffer it was decoded from. Contract for callers: never reuse or overwrite a buffer after
# decoding from it (every input here is a fresh socket chunk, frame or message).
grep -rl 'Buffer.from(reader.bytes())' "$OUT" | while read -r f; do
  sed -i 's/Buffer\.from(reader\.bytes())/bytesView(reader.bytes())/' "$f"
  cat >> "$f" <<'EOT'

/** `b` as a Buffer over the same memory (no copy); added by tools/gen-proto.sh. */
function bytesView(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}
EOT
done

