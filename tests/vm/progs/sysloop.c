// N rounds of three cheap syscalls nothing else in the guest makes:
// getppid(), getpgid(0), getsid(0); each reaches its __x64_sys_* function
// exactly once (tests/vm/t-kprobe.sh, t-ftrace.sh count those).
// usage: sysloop N
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000;
	long ppid = syscall(SYS_getppid), pgid = syscall(SYS_getpgid, 0), sid = syscall(SYS_getsid, 0);
	for (long i = 1; i < n; i++) {
		if (syscall(SYS_getppid) != ppid || syscall(SYS_getpgid, 0) != pgid || syscall(SYS_getsid, 0) != sid) {
			fprintf(stderr, "sysloop: a result changed in round %ld\n", i);
			return 1;
		}
	}
	printf("sysloop: %ld rounds of getppid, getpgid, getsid\n", n);
	return 0;
}
