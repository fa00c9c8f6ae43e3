#!/usr/bin/env bash
# make user-check: runs Debian's static busybox under kdbt's translation in user space and
# compares every applet's output byte for byte with a native run (docs/user-check.md).
# Extra arguments go to `kdbt-user check` (--quick: skip the counted runs; --loader:
# validate the ELF loader without translation).
exec bash "$(dirname "$0")/kdbt-user.sh" check "$@"
