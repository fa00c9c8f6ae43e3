#!/bin/sh
# `make coverage` / `make profile`'s guest side (kdbt.mode=coverage|profile):
# load kdbt with a client (coverage or count), run the workload translated
# (/kdbt/client-workload.sh, from KDBT_WORKLOAD, or short-workload.sh), then
# send the client's debugfs files to the host over the second serial port
# (/dev/ttyS1, a file on the host): a gzip'd tar in base64 between a line
# "=== kdbt data begin <bytes> <md5> ===" and a line "=== kdbt data end ===".
# Problems go into the tar as the file "errors", which the host reports.
client="$1"
K=/sys/kernel/kdbt
D=/sys/kernel/debug/kdbt
out=/tmp/kdbt-client
mkdir -p $out
problem() { echo "client-run: $*"; echo "$*" >> $out/errors; }
case "$client" in
    coverage) files="coverage coverage.drcov" ;;
    count) files="counts" ;;
esac
workload=/kdbt/tests/short-workload.sh
[ -f /kdbt/client-workload.sh ] && workload=/kdbt/client-workload.sh
echo "=== kdbt client $client ==="
[ -d /sys/kernel/debug/kdbt ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null
dmesg -c >/dev/null
if ! insmod /kdbt/kdbt.ko; then
    problem "insmod failed"
elif ! echo "$client" > $K/client; then
    problem "echo $client > $K/client failed (a kdbt without clients?)"
else
    echo 1 > $K/enabled || problem "echo 1 > $K/enabled failed"
    start=$(cut -d' ' -f1 /proc/uptime)
    echo "--- workload $workload, translated:"
    sh "$workload"
    echo 0 > $K/enabled
    echo "--- echo 0: translation off after $(awk "BEGIN { print $(cut -d' ' -f1 /proc/uptime) - $start }") s"
    for f in $files; do
        cat $D/$f > $out/$f || problem "reading $D/$f failed"
    done
    head -n 1 $out/${files%% *} 2>/dev/null
    echo none > $K/client
fi
grep -q '^kdbt ' /proc/modules && { rmmod kdbt || problem "rmmod failed"; }
dmesg | grep 'kdbt' > $out/dmesg
(cd $out && tar -czf /tmp/kdbt-client.tgz *)
stty -F /dev/ttyS1 115200 raw -echo 2>/dev/null
{
    echo "=== kdbt data begin $(wc -c < /tmp/kdbt-client.tgz) $(md5sum < /tmp/kdbt-client.tgz | cut -c1-32) ==="
    base64 /tmp/kdbt-client.tgz
    echo "=== kdbt data end ==="
} > /dev/ttyS1 || echo "client-run: writing to /dev/ttyS1 failed"
echo "--- sent $(wc -c < /tmp/kdbt-client.tgz) bytes ($(cd $out && echo *)) over /dev/ttyS1"
echo "=== end ==="
