#!/usr/bin/env bash
# One GPU run that returns its headline first, with every result under one folder and, after
# every stage, in one archive beside it.
#
#   bash benchmarks/gpu_check.sh [DIR]      run it (default DIR: reports/runs/gpu-check)
#   bash benchmarks/gpu_check.sh --dry-run  the stages, their cases and an estimate of each
#                                           stage's time on one H200 (works on a CPU machine)
#
# Stages, in order (a GPU may be lent for ~15 minutes, its start included):
#   env  DIR/env.txt: attnbench env, nvidia-smi; stops here (exit 2) if torch sees no CUDA.
#   a    the headline, in DIR/a-headline/: LSH-1 and LSH-4 against FlashAttention (torch) and
#        cuDNN attention (JAX), fwd+bwd, bfloat16, 16K and 64K tokens: suites/gpu-headline.toml's
#        cases, run as `attnbench run gpu-check --cases-of gpu-headline` into DIR/run (the
#        gpu-check run directory, so stage c does not run them again; run.log); then each fused
#        LSH kernel (torch Triton, JAX Pallas) against the portable core on CUDA, outputs and
#        gradients on two shapes (benchmarks/gpu_kernel_check.py: kernel_check_<framework>.json
#        and .log); summary.md is written (and DIR packed) after the cases, and again with the
#        kernel checks.
#   b    the CUDA tests (every torch and JAX test's cuda instance: the kernels compiled, against
#        the NumPy reference): DIR/b-tests/tests.log, tests.xml (SIGINT after 300 s, so pytest
#        still writes what ran).
#   c    the rest of gpu-check (resuming DIR/run), its HTML report (DIR/run/index.html) and the
#        full summary: DIR/c-gpu-check/run.log, report.log, summary.md.
# After each stage DIR is packed into DIR.tar.gz beside it (written to a temporary name, then
# renamed: the archive on disk is always a whole one), to carry off a machine that is given
# back after the run. DIR/stages.tsv records every step: stage, step, exit status, seconds, end
# time (UTC). A failing step does not stop the later ones. Run again with the same DIR to
# resume: `attnbench run` skips the cases already in DIR/run, and a kernel check or a test step
# whose last recorded exit status is 0 is not repeated (delete its line in stages.tsv to redo
# it). Needs torch with CUDA and triton; JAX with its CUDA plugin for the JAX half (without it
# those rows are errors that say so, never CPU runs). Exit status: 2 if there is no CUDA
# device, else 1 if any step of this invocation failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the harness reads JAX's own peak, not a pool
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
frameworks=(torch jax)

if [ "${1:-}" = "--dry-run" ]; then
    dir=reports/runs/gpu-check
    echo "== gpu_check.sh --dry-run: what 'bash benchmarks/gpu_check.sh $dir' would do, in order"
    echo "   (after every stage: $dir packed into $dir.tar.gz; every step recorded in"
    echo "   $dir/stages.tsv; a failing step does not stop the later ones)"
    echo
    echo "stage env: attnbench env, nvidia-smi -> $dir/env.txt; exit 2 without a CUDA device"
    echo
    echo "stage a (headline) -> $dir/a-headline/:"
    echo "  $py -m attnbench.cli run gpu-check --cases-of gpu-headline --out $dir/run:"
    "$py" -m attnbench.cli run gpu-check --cases-of gpu-headline --dry-run 2>&1 || exit
    for fw in "${frameworks[@]}"; do
        echo "  $py benchmarks/gpu_kernel_check.py --framework $fw --json .../kernel_check_$fw.json"
    done
    "$py" -c 'import sys; sys.path.insert(0, "benchmarks"); import gpu_kernel_check as k
for s in k.SHAPES["default"]:
    print(f"    shape {s.name}: {s.dtype}, causal={s.causal}, B={s.batch} H={s.heads} "
          f"L={s.length} d_head={s.d_head} hashes={s.n_hashes} chunk={s.chunk_len} "
          f"buckets={s.n_buckets} window=-{s.n_chunks_before}..+{s.n_chunks_after}; "
          f"tolerance {k.tolerance(s.dtype):.0e}")' || exit
    echo "  $py benchmarks/gpu_summary.py --headline $dir/run --kernel-check ... > summary.md"
    echo
    echo "stage b (CUDA tests) -> $dir/b-tests/:"
    echo "  timeout -s INT -k 30 300 $py -m pytest -q -p no:cacheprovider -k cuda" \
        "--junitxml=.../tests.xml tests/torch_impl tests/jax_impl"
    echo "    (their number on a GPU is counted below, from this machine's collection)"
    echo
    echo "stage c (the rest of gpu-check) -> $dir/run/, $dir/c-gpu-check/:"
    echo "  $py -m attnbench.cli run gpu-check --out $dir/run  (resumes; the headline's cases" \
        "are done)"
    "$py" -m attnbench.cli run gpu-check --dry-run 2>&1 >/dev/null || exit
    echo "  $py -m attnbench.cli report $dir/run"
    echo "  $py benchmarks/gpu_summary.py $dir/run > summary.md"
    echo
    exec "$py" benchmarks/gpu_estimate.py --cases
fi

dir=${1:-reports/runs/gpu-check}
dir=${dir%/}
mkdir -p "$dir" || exit 2
dir=$(cd "$dir" && pwd)  # absolute: the archive goes beside it, whatever DIR looked like
archive=$dir.tar.gz
stages=$dir/stages.tsv
[ -e "$stages" ] || printf 'stage\tstep\texit\tseconds\tended_utc\n' >"$stages"
failed=0

pack() {  # DIR -> DIR.tar.gz, whole or not at all
    if tar -czf "$archive.part" -C "$(dirname "$dir")" "$(basename "$dir")" 2>/dev/null \
        && mv -f "$archive.part" "$archive"; then
        echo "gpu_check.sh: packed $archive ($(du -h "$archive" | cut -f1)) after stage $1"
    else
        echo "gpu_check.sh: could not pack $archive after stage $1" >&2
        rm -f "$archive.part"
    fi
}

record() {  # stage step exit seconds
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(date -u +%FT%TZ)" >>"$stages"
    if [ "$3" -ne 0 ]; then
        failed=1
        echo "gpu_check.sh: stage $1, $2: exit status $3 (recorded in stages.tsv)" >&2
    fi
}

passed_before() {  # stage step: whether the last record of that step says exit 0
    awk -F'\t' -v s="$1" -v t="$2" '$1 == s && $2 == t { last = $3 } END { exit !(last == "0") }' \
        "$stages"
}

step() {  # stage step log command...: run it, its output on the terminal and in log
    local stage=$1 name=$2 log=$3 start=$SECONDS rc
    shift 3
    echo "== stage $stage: $name"
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    record "$stage" "$name" "$rc" $((SECONDS - start))
    return "$rc"
}

echo "== stage env"
{
    echo "== $(date -u +%FT%TZ)"
    "$py" -m attnbench.cli env
    nvidia-smi -q 2>&1 | head -n 200
} >>"$dir/env.txt" 2>&1
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: torch sees no CUDA device; this script measures the GPU paths" >&2
    record env cuda 2 0
    pack env
    exit 2
fi
record env cuda 0 0
pack env

a=$dir/a-headline
mkdir -p "$a"
checks=()
for fw in "${frameworks[@]}"; do checks+=(--kernel-check "$a/kernel_check_$fw.json"); done
step a "headline cases" "$a/run.log" \
    "$py" -m attnbench.cli run gpu-check --cases-of gpu-headline --out "$dir/run" --no-progress
# the timings first, in summary.md and the archive; rewritten below with the kernel checks
"$py" benchmarks/gpu_summary.py --headline "$dir/run" "${checks[@]}" 2>&1 | tee "$a/summary.md"
pack "a (cases)"
for fw in "${frameworks[@]}"; do
    if passed_before a "kernel check $fw"; then
        echo "== stage a: kernel check $fw passed in an earlier run (stages.tsv); not repeated"
        continue
    fi
    rm -f "$a/kernel_check_$fw.json"
    step a "kernel check $fw" "$a/kernel_check_$fw.log" timeout -s INT -k 30 300 \
        "$py" benchmarks/gpu_kernel_check.py --framework "$fw" --json "$a/kernel_check_$fw.json"
done
step a "headline summary" "$a/summary.md" \
    "$py" benchmarks/gpu_summary.py --headline "$dir/run" "${checks[@]}"
pack a

b=$dir/b-tests
mkdir -p "$b"
if passed_before b "cuda tests"; then
    echo "== stage b: the CUDA tests passed in an earlier run (stages.tsv); not repeated"
else
    step b "cuda tests" "$b/tests.log" timeout -s INT -k 30 300 \
        "$py" -m pytest -q -p no:cacheprovider -k cuda --junitxml="$b/tests.xml" \
        tests/torch_impl tests/jax_impl
fi
pack b

c=$dir/c-gpu-check
mkdir -p "$c"
step c "gpu-check suite" "$c/run.log" \
    "$py" -m attnbench.cli run gpu-check --out "$dir/run" --no-progress
step c "report" "$c/report.log" "$py" -m attnbench.cli report "$dir/run"
step c "summary" "$c/summary.md" "$py" benchmarks/gpu_summary.py "$dir/run"
pack c

echo "gpu_check.sh: ${SECONDS}s; steps in $stages:"
column -t -s $'\t' "$stages" 2>/dev/null || cat "$stages"
echo "gpu_check.sh: everything in $dir and $archive"
exit "$failed"
