#!/bin/sh
# Stack traces taken while translated show the kernel functions they show
# natively: /proc/PID/stack of a task that entered nanosleep under
# translation (the ORC unwinder on the distro kernel, frame pointers on the
# small one) lists the same functions as for one that did natively; and
# sysrq-l's backtraces of every CPU (NMIs that interrupt translated code)
# name kernel symbols only: no RIP or trace entry is a bare, symbol-less
# address, which is what a code-cache address would print as.
. ./lib.sh
K=/sys/kernel/kdbt
# The unwinder refuses a task that is running on another CPU (an empty
# stack), so wait until the sleeper has reached nanosleep, up to 10 s.
sleeper() { # file
    sleep 100 &
    pid=$!
    i=0
    while :; do
        cat /proc/$pid/stack > "$1"
        grep -q nanosleep "$1" && break
        [ $i -lt 50 ] || break
        usleep 200000
        i=$((i + 1))
    done
    state=$(sed 's/^.*) //; s/ .*//' /proc/$pid/stat)
    kill $pid
    wait $pid 2> /dev/null
    [ -s "$1" ] || fail "empty /proc/$pid/stack (state $state)"
    grep -q nanosleep "$1" || { cat "$1"; fail "/proc/$pid/stack names no nanosleep (state $state)"; }
}
funcs() { sed 's/^\[<[0-9a-f]*>\] //; s/+0x[0-9a-f]*\/0x[0-9a-f]*$//' "$1"; }
sleeper /tmp/st.native
kdbt_load
echo 1 > $K/enabled || fail "enable failed"
sleeper /tmp/st.translated
funcs /tmp/st.native > /tmp/st.native.f
funcs /tmp/st.translated > /tmp/st.translated.f
diff /tmp/st.native.f /tmp/st.translated.f || fail "/proc/PID/stack differs translated"
echo "sleeping task, translated: $(cat /tmp/st.translated.f | tr '\n' ' ')"
if [ -w /proc/sysrq-trigger ]; then
    echo "kdbt-test: sysrq-l" > /dev/kmsg
    echo l > /proc/sysrq-trigger
    usleep 500000
    dmesg | sed -n '/kdbt-test: sysrq-l/,$p' > /tmp/sysrq.log
    n=$(grep -c "RIP: 0010:" /tmp/sysrq.log)
    [ "$n" -gt 0 ] || { cat /tmp/sysrq.log; fail "sysrq-l printed no backtrace"; }
    if grep -E 'RIP: 0010:0x|^\[[ 0-9.]*\] +(\? )?0x[0-9a-f]+' /tmp/sysrq.log; then
        fail "a backtrace holds a bare address"
    fi
    echo "sysrq-l: $n CPU backtraces, every RIP and frame a kernel symbol"
fi
echo 0 > $K/enabled
kdbt_unload
