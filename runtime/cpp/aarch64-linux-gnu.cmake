# CMake toolchain file: cross-compile for 64-bit ARM Linux with Debian's GNU cross compiler
# (apt-get install g++-aarch64-linux-gnu). Run the result with
#   qemu-aarch64-static -cpu cortex-a53 -L /usr/aarch64-linux-gnu ./rwkv-edge-runner ...
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# The TVM libraries are found through TVM_SITE / TVM_LIB_DIRS (absolute paths), not the sysroot.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
