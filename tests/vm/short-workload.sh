#!/bin/sh
# The short real workload of `make run` (sourced by workload.sh) and the
# default one of `make coverage` / `make profile` (client-run.sh).
i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i + 1)); done
echo "sum 1..5000 = $(seq 1 5000 | awk '{ s += $1 } END { print s }')"
dd if=/dev/urandom of=/tmp/f bs=64k count=16 2>/dev/null; echo "tmpfs md5 $(md5sum < /tmp/f | cut -c1-32)"; rm /tmp/f
/kdbt/bin/sockets
/kdbt/bin/faults
