# Cross-compiling weft for AArch64 Linux with Debian's gcc-aarch64-linux-gnu.
#
#   WEFT_AARCH64_PREFIX=$PWD/build-aarch64/sysroot \
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=tools/aarch64-toolchain.cmake
#
# The C library is the cross one in /usr/aarch64-linux-gnu. The arm64 builds
# of weft's dependencies (hwloc, jemalloc, libatomic_ops, cmocka) come from
# one of two places:
#  - WEFT_AARCH64_PREFIX set (what tools/test-aarch64 does): a directory
#    into which Debian's arm64 .deb files were unpacked, laid out as /
#    (usr/include, usr/lib/aarch64-linux-gnu). Nothing is installed on the
#    host, so nothing there can conflict with the native packages.
#  - unset: Debian multiarch (dpkg --add-architecture arm64, then
#    apt-get install libhwloc-dev:arm64 ...), under /usr/lib/aarch64-linux-gnu.
#    On Debian 12, libjemalloc-dev and libatomic-ops-dev are not Multi-Arch:
#    same, so their arm64 builds replace the native ones; hence the prefix.
# The variable is read from the environment at every configure, so set it
# for each cmake run that configures this build directory.
#
# Binaries run under qemu-user; CMAKE_CROSSCOMPILING_EMULATOR lets ctest and
# try_run use it too.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_ASM_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(_weft_prefix "$ENV{WEFT_AARCH64_PREFIX}")
if(_weft_prefix)
  set(_weft_lib ${_weft_prefix}/usr/lib/aarch64-linux-gnu)
  set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu ${_weft_prefix})
  # Before /usr/include, which holds the host's copies of the same headers;
  # the multiarch directory holds the arch-specific ones (hwloc's config.h).
  set(_weft_inc "-isystem ${_weft_prefix}/usr/include/aarch64-linux-gnu -isystem ${_weft_prefix}/usr/include")
  set(CMAKE_C_FLAGS_INIT "${_weft_inc}")
  set(CMAKE_ASM_FLAGS_INIT "${_weft_inc}")
  # -L for libraries named bare (-lcmocka); -rpath-link so the linker finds
  # the libraries those depend on (libhwloc needs libudev).
  foreach(kind EXE SHARED MODULE)
    set(CMAKE_${kind}_LINKER_FLAGS_INIT "-L${_weft_lib} -Wl,-rpath-link,${_weft_lib}")
  endforeach()
  # pkg-config reads the prefix's .pc files only, and prepends the prefix
  # to the /usr paths they name.
  set(ENV{PKG_CONFIG_LIBDIR} "${_weft_lib}/pkgconfig:${_weft_prefix}/usr/share/pkgconfig")
  set(ENV{PKG_CONFIG_SYSROOT_DIR} "${_weft_prefix}")
  set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu
      -E LD_LIBRARY_PATH=${_weft_lib})
else()
  set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /)
  # pkg-config must see the arm64 .pc files only, never the host's.
  set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
  set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
endif()
set(ENV{PKG_CONFIG_PATH} "")

set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
