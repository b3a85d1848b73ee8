#!/usr/bin/env bash
# Everything needed to run aarch64 code on an x86-64 Debian 12 machine:
#   1. Debian packages: qemu-user-static (user-mode emulator), the aarch64 GNU cross compilers,
#      mmdebstrap (builds the arm64 root filesystem), cmake and g++ (the native runtime in
#      runtime/cpp is built with them, for the host and cross-compiled for aarch64), and clang (a
#      test builds the Swift layer's module map as a Clang module).
#   2. $RWKV_EDGE_ARM_ROOT/site/     aarch64 wheels of TVM's runtime and its Python dependencies,
#                                    unpacked (site/tvm/lib/libtvm_runtime.so, site/tvm_ffi/lib/...).
#   3. $RWKV_EDGE_ARM_ROOT/sysroot/  an arm64 Debian bookworm root with CPython 3.11, the `-L`
#                                    prefix for qemu-aarch64-static.
# RWKV_EDGE_ARM_ROOT defaults to ~/.cache/rwkv-edge/aarch64. Idempotent: a part is rebuilt only
# when its stamp (the versions it was built from) differs from what this script would build.
# No ARM code runs here: wheels are unpacked, Debian packages extracted.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
arm_root="${RWKV_EDGE_ARM_ROOT:-$HOME/.cache/rwkv-edge/aarch64}"
python="${PYTHON:-python3.11}"
suite=bookworm
apt_packages=(qemu-user-static gcc-aarch64-linux-gnu g++-aarch64-linux-gnu mmdebstrap python3.11-venv cmake g++ clang)
debian_includes=python3.11,libpython3.11-stdlib,libstdc++6,libgcc-s1,libc6,zlib1g

say() { printf '[install-arm-tools] %s\n' "$*"; }

# --- 1. Debian packages --------------------------------------------------------------------------
missing=()
for pkg in "${apt_packages[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    say "Debian packages already installed: ${apt_packages[*]}"
else
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { say "need root (or sudo) to apt-get install ${missing[*]}"; exit 1; }
        sudo=(sudo)
    fi
    say "apt-get update && apt-get install -y ${missing[*]}"
    # Wait for another apt/dpkg run to release its lock instead of failing on it.
    apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -qq
    # With recommends, as verified: libc6-dev-arm64-cross (to link), arch-test, ... for mmdebstrap.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq "${missing[@]}"
fi

# --- version pins: constraints.txt wins; the defaults cover names it does not list yet ------------
pin() {  # pin NAME DEFAULT -> the version constraints.txt gives NAME, else DEFAULT
    local found
    found="$(grep -i -E "^$1==" "$repo/constraints.txt" 2>/dev/null | head -n1 | cut -d= -f3 \
             | tr -d '[:space:]' || true)"
    echo "${found:-$2}"
}
wheels=(
    "apache-tvm==$(pin apache-tvm 0.27.0.post1)"
    "apache-tvm-ffi==$(pin apache-tvm-ffi 0.1.14.post1)"
    "numpy==$(pin numpy 2.4.6)"
    "ml_dtypes==$(pin ml_dtypes 0.6.0)"
    "typing_extensions==$(pin typing_extensions 4.16.0)"
    "cloudpickle==$(pin cloudpickle 3.1.2)"
)
platform_opts=(--only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11
               --implementation cp --abi cp311 --abi abi3 --abi none)

mkdir -p "$arm_root"
# Parts built by an interrupted run are left as *.partial.* and removed here.
rm -rf "$arm_root"/*.partial.*

# replace NAME TMPDIR STAMP_TEXT: swap a finished build into place, stamp last.
replace() {
    rm -f "$arm_root/$1.stamp"
    rm -rf "$arm_root/$1"
    mv "$2" "$arm_root/$1"
    printf '%s\n' "$3" > "$arm_root/$1.stamp.partial.$$"
    mv "$arm_root/$1.stamp.partial.$$" "$arm_root/$1.stamp"
}

# --- 2. site/: aarch64 wheels, unpacked ------------------------------------------------------------
site_stamp="$(printf 'platform manylinux_2_28_aarch64 cp311\n'; printf '%s\n' "${wheels[@]}")"
if [ -f "$arm_root/site.stamp" ] && [ "$(cat "$arm_root/site.stamp")" = "$site_stamp" ] \
        && [ -d "$arm_root/site/tvm" ]; then
    say "site/ is up to date: ${wheels[*]}"
else
    tools="$arm_root/tools-venv"   # an x86 pip to fetch and unpack the aarch64 wheels
    if [ ! -x "$tools/bin/pip" ]; then
        say "creating $tools (pip for fetching wheels)"
        rm -rf "$tools"
        "$python" -m venv "$tools"
    fi
    tmp="$(mktemp -d "$arm_root/site.partial.XXXXXX")"
    say "pip download ${wheels[*]} (manylinux_2_28_aarch64, cp311) into $arm_root/wheels"
    "$tools/bin/pip" download --disable-pip-version-check --quiet --no-deps "${platform_opts[@]}" \
        --dest "$arm_root/wheels" "${wheels[@]}"
    say "pip install --no-deps --target $arm_root/site"
    "$tools/bin/pip" install --disable-pip-version-check --quiet --no-deps --no-index \
        --find-links "$arm_root/wheels" "${platform_opts[@]}" --target "$tmp" "${wheels[@]}"
    replace site "$tmp" "$site_stamp"
    say "site/ ready ($(du -sh "$arm_root/site" | cut -f1))"
fi

# --- 3. sysroot/: arm64 Debian root with python3.11 ------------------------------------------------
sysroot_stamp="$(printf 'debian %s arm64 extract\n%s\n' "$suite" "$debian_includes")"
if [ -f "$arm_root/sysroot.stamp" ] && [ "$(cat "$arm_root/sysroot.stamp")" = "$sysroot_stamp" ] \
        && [ -x "$arm_root/sysroot/usr/bin/python3.11" ]; then
    say "sysroot/ is up to date: $suite arm64 with $debian_includes"
else
    tmp="$(mktemp -d "$arm_root/sysroot.partial.XXXXXX")"
    say "mmdebstrap $suite arm64 ($debian_includes) into $arm_root/sysroot"
    mmdebstrap --quiet --mode=root --variant=extract --architectures=arm64 \
        --include="$debian_includes" "$suite" "$tmp"
    chmod 755 "$tmp"   # mktemp made it 700; the sysroot must stay readable for non-root users
    replace sysroot "$tmp" "$sysroot_stamp"
    say "sysroot/ ready ($(du -sh "$arm_root/sysroot" | cut -f1))"
fi

say "done: $arm_root"
say "  run arm64 python: qemu-aarch64-static -L $arm_root/sysroot $arm_root/sysroot/usr/bin/python3.11"
say "  with PYTHONPATH=$arm_root/site"
