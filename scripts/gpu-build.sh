#!/usr/bin/env bash
# Builds the binaries scripts/gpu-check.sh runs on the accelerator machine
# (which has no Rust toolchain) into .gpu/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p insilico-kernels --features cuda --example p5
cargo test --release -p insilico-kernels --features cuda --test cuda_twin --no-run
mkdir -p .gpu
cp target/release/examples/p5 .gpu/p5
bin=$(ls -t target/release/deps/cuda_twin-* | grep -v '\.d$' | head -1)
cp "$bin" .gpu/cuda_twin
ls -la .gpu
