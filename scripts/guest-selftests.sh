#!/usr/bin/env bash
# Compiles the kernel's own x86 selftests (tools/testing/selftests/x86 of the
# test kernel's source tree in the cache, scripts/kernel.sh) as static 64-bit
# programs into $KDBT_BUILD/guest-selftests/x86, which the initramfs installs
# as /kdbt/selftests/x86; tests/vm/t-kernel_selftests_x86.sh runs each one
# natively and translated. Nothing of the kernel's source is kept in this
# repository. Flags as in the selftests' Makefile (-O2 -g -std=gnu99 -pthread
# -Wall -no-pie -DCAN_BUILD_64, -lrt -ldl, its extra sources and link flags)
# plus -static: the guest has no shared libc. Differences from `make -C
# tools/testing/selftests/x86`:
# - Debian 12's uapi headers (linux-libc-dev 6.1), not the tree's: the
#   Makefile's KHDR_INCLUDES name the tree's usr/include, which only `make
#   headers` fills, and that would write into the shared kernel cache. Every
#   program below compiles with them.
# - 64-bit programs only: gcc-multilib is not installed, so no *_32 programs
#   and no -DCAN_BUILD_32 (the 64-bit programs leave out their 32-bit parts).
# - ldt_gdt and ptrace_syscall, which the Makefile builds as 64-bit programs
#   only when it can also build 32-bit ones (TARGETS_C_32BIT_NEEDED), are
#   built anyway: they compile and link as 64-bit programs and test the LDT
#   and GDT, and syscall arguments and restarts under ptrace.
# Prints the output directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
src="$("$here/kernel.sh")/tools/testing/selftests/x86"
[ -f "$src/Makefile" ] || die "no x86 selftests in $src"
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || die "static libc missing: install the Debian package libc6-dev (make setup)"
# The programs, all of the Makefile's 64-bit ones (TARGETS_C_BOTHBITS,
# TARGETS_C_64BIT_ONLY) but these, measured in the VM (QEMU 7.2 TCG):
# - sysret_ss_attrs: kills the guest kernel natively. Its far return to the
#   32-bit user code segment (`lretq`, thunks.S) makes QEMU 7.2 read the user
#   stack with supervisor accesses, which SMAP refuses: a #PF with a
#   supervisor error code from user mode, "BUG: unable to handle page fault".
# - syscall_numbering: too slow under TCG: still running after 60 s natively
#   (1.4 s of system time on the host: every syscall number 0..999 with and
#   without the x32 bit, under five ptrace modes).
# - amx, lam, test_shadow_stack: QEMU 7.2's TCG CPU has no AMX, no LAM and no
#   CET shadow stack; they only skip, both ways.
PROGS="check_initial_reg_state corrupt_xstate_header fsgsbase fsgsbase_restore
ioperm iopl ldt_gdt mov_ss_trap nx_stack ptrace_syscall sigaltstack sigreturn
sigtrap_loop single_step_syscall syscall_arg_fault syscall_nt sysret_rip
test_mremap_vdso test_vsyscall"
CFLAGS="-O2 -g -std=gnu99 -pthread -Wall -no-pie -DCAN_BUILD_64 -static"
out="$KDBT_BUILD/guest-selftests/x86"
logs="$KDBT_BUILD/guest-selftests/log"
# Another kernel tree, other flags or another list: build them all again.
stamp="$src $CFLAGS $(sha256sum "$0" | cut -c1-12)"
[ "$(cat "$logs/stamp" 2>/dev/null)" = "$stamp" ] || rm -rf "$out" "$logs"
mkdir -p "$out" "$logs"
for t in $PROGS; do
    extra=
    case $t in
        sysret_rip | fsgsbase_restore) extra="$src/clang_helpers_64.S" ;;
        # Its own entry point and no interpreter: it checks the registers
        # as execve left them.
        check_initial_reg_state) extra="-Wl,-ereal_start" ;;
        nx_stack) extra="-Wl,-z,noexecstack" ;;
    esac
    bin="$out/$t"
    [ -e "$bin" ] && [ "$bin" -nt "$src/$t.c" ] && [ "$bin" -nt "$src/helpers.h" ] && continue
    # (test_vsyscall links with a warning that dlopen() in a static program
    # needs glibc's shared libraries at run time; it only dlopen()s the
    # vDSO, which static glibc knows: its vDSO checks run.)
    # shellcheck disable=SC2086
    gcc -m64 -o "$bin" $CFLAGS "$src/$t.c" $extra -lrt -ldl >"$logs/$t.log" 2>&1 \
        || { cat "$logs/$t.log" >&2; die "compiling selftest $t failed"; }
done
echo "$stamp" >"$logs/stamp"
echo "$out"
