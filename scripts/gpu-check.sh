#!/usr/bin/env bash
# One device run: GPU tests (GPU vs CPU twin), P5 on GPU and CPU, and the same
# ensemble with JAX/diffrax and torchdiffeq on the same GPU; results under $OUT.
#
# The accelerator machine has no Rust toolchain, so the Rust binaries are built
# here first by `scripts/gpu-build.sh` into .gpu/ (git-ignored) and carried.
# usage (device): bash scripts/gpu-check.sh [N_P5 | tests]   ("tests": the GPU tests only)
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
N=${1:-1000000}
# cudarc opens libnvrtc.so[.12] and libcuda.so.1 at run time; point it at the toolkit's.
nv=$(ls /usr/local/cuda/lib64/libnvrtc.so* 2>/dev/null | head -1)
[ -n "$nv" ] || nv=$(find / -name 'libnvrtc.so*' -not -path '*/proc/*' 2>/dev/null | grep -v -e stub -e alt -e builtins | head -1)
libdir=$(mktemp -d)
[ -n "$nv" ] && ln -sf "$nv" "$libdir/libnvrtc.so"
export LD_LIBRARY_PATH="$libdir:$(dirname "${nv:-/usr/local/cuda/lib64/x}"):/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
{ nvidia-smi; echo "nvrtc: $nv"; nproc; } > "$OUT/machine.txt" 2>&1
echo "== GPU tests"; .gpu/cuda_twin --nocapture --test-threads=1 2>&1 | tee "$OUT/gpu_tests.log"
[ "$N" = "tests" ] && exit 0
echo "== P5 (Rust: CPU all cores + CUDA)"; .gpu/p5 "$N" "$OUT/p5.json" 2>&1 | tee "$OUT/p5.log"
echo "== P5 JAX/diffrax"; PYTHONUNBUFFERED=1 timeout 300 python3 scripts/p5_diffrax.py "$N" "$OUT/diffrax.json" 150 2>&1 | tail -25 | tee "$OUT/diffrax.log"
echo "== P5 torchdiffeq"; PYTHONUNBUFFERED=1 timeout 200 python3 scripts/p5_torchdiffeq.py "$N" "$OUT/torchdiffeq.json" 90 2>&1 | tail -15 | tee "$OUT/torchdiffeq.log"
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(n):
    try: return json.load(open(os.path.join(out, n)))
    except Exception as e: return {"error": str(e)}
p5, dx, td = load("p5.json"), load("diffrax.json"), load("torchdiffeq.json")
res = {"p5": p5, "diffrax": dx, "torchdiffeq": td}
g = p5.get("gpu_tsit5_kernel_s"); gt = p5.get("gpu_tsit5_total_s")
if g:
    res["ratios"] = {
        "diffrax_over_gpu_kernel": dx.get("wall_s_extrapolated_to_n", float("nan")) / g,
        "diffrax_over_gpu_total": dx.get("wall_s_extrapolated_to_n", float("nan")) / gt,
        "torchdiffeq_over_gpu_kernel": td.get("wall_s_extrapolated_to_n", float("nan")) / g,
        "cpu_over_gpu_kernel": p5.get("cpu_tsit5_s", float("nan")) / g,
        "kernel_over_bound": p5.get("kernel_over_bound"),
    }
json.dump(res, open(os.path.join(out, "gpu_times.json"), "w"), indent=2)
print(json.dumps(res.get("ratios", {}), indent=2))
PY
