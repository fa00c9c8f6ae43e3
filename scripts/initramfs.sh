#!/usr/bin/env bash
# Builds the guest initramfs: busybox-static, kdbt.ko, the VM tests, the test
# kernel modules (scripts/test-modules.sh, in /kdbt/modules), the kernel's x86
# selftests (scripts/guest-selftests.sh, in /kdbt/selftests/x86), /init, and
# $KDBT_WORKLOAD when set (as /kdbt/client-workload.sh).
# usage: initramfs.sh KO OUT.cpio
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
ko="$1"; out="$2"
[ -x /bin/busybox ] || die "/bin/busybox missing: install the Debian package busybox-static (make setup)"
command -v cpio >/dev/null || die "cpio missing: install the Debian package cpio (make setup)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
# The archive's "." becomes the guest's /: mktemp's 0700 would keep every
# user but root out of every path (the tests' uid 1000 could not exec a thing).
chmod 755 "$root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,root,kdbt/tests,kdbt/bench,kdbt/modules}
cp /bin/busybox "$root/bin/busybox"
for app in $(/bin/busybox --list); do
    [ -e "$root/bin/$app" ] || ln -s busybox "$root/bin/$app"
done
cp "$ko" "$root/kdbt/kdbt.ko"
cp "$KDBT_ROOT"/tests/vm/*.sh "$KDBT_ROOT"/tests/vm/*.inc "$root/kdbt/tests/"
[ -d "$KDBT_ROOT/tests/bench" ] && cp -r "$KDBT_ROOT"/tests/bench/. "$root/kdbt/bench/"
cp "$KDBT_ROOT/tests/vm/init" "$root/init"
# KDBT_WORKLOAD: the shell file `make coverage` / `make profile` run translated.
if [ -n "${KDBT_WORKLOAD:-}" ]; then
    cp "$KDBT_WORKLOAD" "$root/kdbt/client-workload.sh" || die "KDBT_WORKLOAD=$KDBT_WORKLOAD: cannot copy it"
fi
progs="$("$here/guest-progs.sh")"
mkdir -p "$root/kdbt/bin"
cp -r "$progs/." "$root/kdbt/bin/"
selftests="$("$here/guest-selftests.sh")"
mkdir -p "$root/kdbt/selftests/x86"
cp "$selftests"/* "$root/kdbt/selftests/x86/"
mods="$("$here/test-modules.sh")"
cp "$mods"/*.ko "$root/kdbt/modules/"
chmod +x "$root/init" "$root"/kdbt/tests/*.sh
(cd "$root" && find . | cpio -o -H newc --quiet) >"$out"
