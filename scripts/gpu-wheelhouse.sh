#!/usr/bin/env bash
# An offline wheelhouse for a GPU machine without network access (Python 3.12, x86-64): the wheels
# rwkv-edge needs beyond what such a machine already has (apache-tvm, apache-tvm-ffi, pyrwkv-tokenizer,
# and setuptools for the editable install: pyproject's SPDX license string needs setuptools >= 77;
# versions from constraints.txt), cut into batches that each fit one transfer (apache-tvm's ~100 MB
# wheel travels as parts).
#
#   bash scripts/gpu-wheelhouse.sh prepare [DIR]          # here, with network: DIR (.gpu) gets call1/, call2/, README
#   bash scripts/gpu-wheelhouse.sh stash SRC...           # there: keep what one transfer brought (in $STASH)
#   bash scripts/gpu-wheelhouse.sh assemble OUT [SRC...]  # there: rejoin the pieces from SRC and $STASH into OUT
#
# Environment: PYTHON (python3), STASH (${XDG_CACHE_HOME:-$HOME/.cache}/rwkv-edge/gpu-stash),
# BATCH_MIB (56: the most one callN/ folder holds), PART_SIZE (45M: split's size of one part).
set -euo pipefail

PYTHON=${PYTHON:-python3}
STASH=${STASH:-${XDG_CACHE_HOME:-$HOME/.cache}/rwkv-edge/gpu-stash}
BATCH_MIB=${BATCH_MIB:-56}
PART_SIZE=${PART_SIZE:-45M}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PACKAGES=(apache-tvm-ffi pyrwkv-tokenizer apache-tvm setuptools)

log() { printf '[gpu-wheelhouse] %s\n' "$*"; }
die() { printf 'gpu-wheelhouse: error: %s\n' "$*" >&2; exit 1; }

pinned() {  # NAME -> NAME==VERSION, from constraints.txt
    local line
    line=$(grep -i "^$1==" "$ROOT/constraints.txt") || die "$1 is not pinned in constraints.txt"
    printf '%s\n' "$line"
}

# The fewest batches of at most BATCH_MIB, balanced: the largest piece first, into the emptiest batch.
# Prints "callN PIECE" lines, sorted.
PACK='
import math, sys
from pathlib import Path
pieces = sorted(Path(sys.argv[1]).iterdir(), key=lambda p: -p.stat().st_size)
limit = int(sys.argv[2]) << 20
if any(p.stat().st_size > limit for p in pieces):
    sys.exit(f"a piece is larger than BATCH_MIB={sys.argv[2]} MiB: lower PART_SIZE")
n = max(1, math.ceil(sum(p.stat().st_size for p in pieces) / limit))
while True:
    loads, plan = [0] * n, []
    for p in pieces:
        i = loads.index(min(loads))
        loads[i] += p.stat().st_size
        plan.append(f"call{i + 1} {p.name}")
    if max(loads) <= limit:
        break
    n += 1
print("\n".join(sorted(plan, key=lambda line: line.split()[1])))
'

prepare() {
    local dir=${1:-$ROOT/.gpu} wheels pkg f batch piece
    wheels="$dir/wheels"
    mkdir -p "$wheels"
    for pkg in "${PACKAGES[@]}"; do
        log "download $(pinned "$pkg") (cp312, manylinux x86-64)"
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$wheels" "$(pinned "$pkg")"
    done
    rm -rf "$dir"/call[0-9]* "$dir/pieces"
    mkdir -p "$dir/pieces"
    (cd "$wheels" && sha256sum -- *.whl) > "$dir/SHA256SUMS"
    for f in "$wheels"/*.whl; do
        if [ "$(stat -c %s "$f")" -gt "$(numfmt --from=iec "$PART_SIZE")" ]; then
            split -b "$PART_SIZE" -a 2 "$f" "$dir/pieces/$(basename "$f").part-"
        else
            cp "$f" "$dir/pieces/"
        fi
    done
    "$PYTHON" -c "$PACK" "$dir/pieces" "$BATCH_MIB" > "$dir/PIECES"
    while read -r batch piece; do
        mkdir -p "$dir/$batch"
        mv "$dir/pieces/$piece" "$dir/$batch/"
    done < "$dir/PIECES"
    rmdir "$dir/pieces"
    for f in "$dir"/call[0-9]*; do cp "$dir/SHA256SUMS" "$dir/PIECES" "$f/"; done
    write_readme "$dir" "$(find "$dir" -maxdepth 1 -name 'call[0-9]*' | wc -l)"
    log "wrote $dir/README; $(cd "$dir" && du -sh call[0-9]* | tr '\t\n' ' ')"
}

write_readme() {
    local dir=$1 n=$2 i tree
    tree=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -n 1 | cut -f1)
    {
        echo "Offline wheelhouse for a GPU machine (Python 3.12, x86-64, no network), made by"
        echo "\`bash scripts/gpu-wheelhouse.sh prepare\`. Not committed (.git/info/exclude: /.gpu/)."
        echo
        echo "Wheels (sha256 in SHA256SUMS; a wheel over $PART_SIZE is split into NAME.whl.part-aa, -ab, ...):"
        (cd "$dir/wheels" && for f in *.whl; do printf '  %s  %s bytes\n' "$f" "$(stat -c %s "$f")"; done)
        echo
        echo "A device call carries 64 MiB at most, the working tree included (about $(( tree >> 20 )) MiB when"
        echo "this was written), so they travel in $n consecutive calls, each carrying one folder (PIECES says which):"
        for i in $(seq 1 "$n"); do
            printf '  call %s: carry [".gpu/call%s"]  (%s MiB: %s)\n' "$i" "$i" \
                "$(( $(du -sb "$dir/call$i" | cut -f1) >> 20 ))" \
                "$(cd "$dir/call$i" && ls | grep -v -e SHA256SUMS -e PIECES | tr '\n' ' ')"
        done
        echo
        echo "A machine left idle goes back after about 30 s and loses what earlier calls stashed: issue the"
        echo "calls back to back. Earlier calls only keep what they brought (a few seconds):"
        for i in $(seq 1 $((n - 1))); do
            echo "  call $i: bash scripts/gpu-wheelhouse.sh stash .gpu/call$i"
        done
        echo "The last call rejoins the pieces (checking every sha256), installs, compiles and verifies (a call"
        echo "runs 10 minutes at most: the benches follow in calls of their own):"
        echo "  call $n: RWKV_EDGE_WHEELHOUSE=out/wheelhouse RWKV_EDGE_WHEEL_PARTS=.gpu/call$n bash scripts/gpu-check.sh --skip-bench --json-dir \$OUT"
        echo "(the wheelhouse alone: bash scripts/gpu-wheelhouse.sh assemble out/wheelhouse .gpu/call$n)."
        echo "Later calls on the same warm machine find out/wheelhouse and out/gpu-check/ (ignored paths stay)"
        echo "and carry nothing, e.g. one bench each:"
        echo "  RWKV_EDGE_WHEELHOUSE=out/wheelhouse bash scripts/gpu-check.sh --skip-verify --bench-models 0.1b --json-dir \$OUT"
        echo "  RWKV_EDGE_WHEELHOUSE=out/wheelhouse bash scripts/gpu-check.sh --skip-verify --bench-models 1.5b --weights fp16 --json-dir \$OUT"
        echo
        echo "assemble looks in the folders it is given and in the stash (\$STASH, default"
        echo "~/.cache/rwkv-edge/gpu-stash), and names a missing piece with the call that carries it."
    } > "$dir/README"
}

stash() {
    [ "$#" -gt 0 ] || die "stash: name the folders a call carried (e.g. .gpu/call1)"
    mkdir -p "$STASH"
    local src
    for src in "$@"; do
        [ -d "$src" ] || die "stash: $src is not a folder (was it carried?)"
        cp -f "$src"/* "$STASH/"
        log "stashed $(find "$src" -maxdepth 1 -type f | wc -l) files of $src in $STASH"
    done
}

assemble() {
    [ "$#" -ge 1 ] || die "assemble: give the wheelhouse folder to write"
    local out=$1 src sums="" pieces="" sha name whl batch piece found tmp
    shift
    local sources=("$@" "$STASH")
    for src in "${sources[@]}"; do
        if [ -z "$sums" ] && [ -f "$src/SHA256SUMS" ] && [ -f "$src/PIECES" ]; then
            sums="$src/SHA256SUMS"
            pieces="$src/PIECES"
        fi
    done
    [ -n "$sums" ] || die "assemble: no SHA256SUMS and PIECES in ${sources[*]} (carry a .gpu/callN folder, or stash one first)"
    mkdir -p "$out"
    while read -r sha name; do
        whl="$out/$name"
        if [ -f "$whl" ] && [ "$(sha256sum < "$whl" | cut -d' ' -f1)" = "$sha" ]; then
            log "$name: already in $out"
            continue
        fi
        tmp="$whl.tmp"
        : > "$tmp"
        while read -r batch piece; do  # sorted by name: a wheel's parts in order
            case "$piece" in "$name" | "$name".part-*) ;; *) continue ;; esac
            found=""
            for src in "${sources[@]}"; do
                if [ -f "$src/$piece" ]; then found="$src/$piece"; break; fi
            done
            if [ -z "$found" ]; then
                rm -f "$tmp"
                die "$piece is missing: it travels in $batch (carry .gpu/$batch; what an earlier call stashed is lost once the machine goes back)"
            fi
            cat "$found" >> "$tmp"
        done < <(sort -k2 "$pieces")
        if [ "$(sha256sum < "$tmp" | cut -d' ' -f1)" != "$sha" ]; then
            rm -f "$tmp"
            die "$name: sha256 differs from SHA256SUMS (a damaged piece: prepare the wheelhouse again)"
        fi
        mv "$tmp" "$whl"
        log "$name: rejoined, sha256 checked"
    done < "$sums"
    log "wheelhouse $out: $(cd "$out" && ls -- *.whl | tr '\n' ' ')"
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    stash) shift; stash "$@" ;;
    assemble) shift; assemble "$@" ;;
    *) die "usage: gpu-wheelhouse.sh prepare [DIR] | stash SRC... | assemble OUT [SRC...]" ;;
esac
