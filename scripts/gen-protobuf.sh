#!/usr/bin/env bash
# Regenerates Sources/Channels/Protocol/Protobuf/client.pb.swift from client.proto. Not part of
# the build: the generated Swift is committed, so neither CI nor `swift build` runs a plugin.
# Needs protoc (Debian: protobuf-compiler) and protoc-gen-swift of the swift-protobuf version in
# Package.swift: PROTOC_GEN_SWIFT=/path/to/protoc-gen-swift, or one on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=Sources/Channels/Protocol/Protobuf
plugin="${PROTOC_GEN_SWIFT:-$(command -v protoc-gen-swift)}"
protoc --plugin=protoc-gen-swift="$plugin" --swift_opt=Visibility=Internal --swift_out="$dir" -I "$dir" "$dir/client.proto"
