#!/bin/sh
# KTAP runner: every tests/vm/t-*.sh is one test case. A case passes when it
# exits 0, is skipped when it exits 4; its output becomes KTAP diagnostics.
cd /kdbt/tests
set -- t-*.sh
echo "TAP version 13"
echo "1..$#"
n=0
for t in "$@"; do
    n=$((n + 1))
    name="${t#t-}"; name="${name%.sh}"
    sh "$t" >/tmp/out.$n 2>&1
    rc=$?
    sed 's/^/# /' /tmp/out.$n
    case $rc in
        0) echo "ok $n $name" ;;
        4) echo "ok $n $name # SKIP" ;;
        *) echo "not ok $n $name # exit $rc" ;;
    esac
done
