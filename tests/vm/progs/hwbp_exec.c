// A perf execute breakpoint on kernel text: PERF_TYPE_BREAKPOINT,
// HW_BREAKPOINT_X, bp_len sizeof(long), at a kernel function from
// /proc/kallsyms (default __x64_sys_getppid, which every getppid() syscall
// calls exactly once), counting mode for this task. Makes N getppid calls
// (default 1000) and prints the count, which must be exactly N.
// usage: hwbp_exec [N [SYMBOL]]
#define _GNU_SOURCE
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static uint64_t kallsyms_lookup(const char *want)
{
	FILE *f = fopen("/proc/kallsyms", "r");
	if (!f) { perror("/proc/kallsyms"); exit(1); }
	char line[512];
	uint64_t found = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long long a;
		char type, name[256];
		if (sscanf(line, "%llx %c %255s", &a, &type, name) == 3 &&
		    (type == 't' || type == 'T') && strcmp(name, want) == 0) {
			found = a;
			break;
		}
	}
	fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000;
	const char *sym = argc > 2 ? argv[2] : "__x64_sys_getppid";
	uint64_t addr = kallsyms_lookup(sym);
	if (!addr) { fprintf(stderr, "%s not in /proc/kallsyms as text\n", sym); return 1; }

	struct perf_event_attr attr;
	memset(&attr, 0, sizeof attr);
	attr.type = PERF_TYPE_BREAKPOINT;
	attr.size = sizeof attr;
	attr.bp_type = HW_BREAKPOINT_X;
	attr.bp_addr = addr;
	attr.bp_len = sizeof(long);
	attr.disabled = 1;
	attr.exclude_kernel = 0;
	attr.exclude_hv = 1;
	int fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
	if (fd < 0) { perror("perf_event_open(HW_BREAKPOINT_X)"); return 1; }

	pid_t parent = getppid(); /* before the event counts */
	ioctl(fd, PERF_EVENT_IOC_RESET, 0);
	ioctl(fd, PERF_EVENT_IOC_ENABLE, 0);
	for (long i = 0; i < n; i++)
		if (syscall(SYS_getppid) != parent) { fprintf(stderr, "getppid changed\n"); return 1; }
	ioctl(fd, PERF_EVENT_IOC_DISABLE, 0);
	uint64_t count = 0;
	if (read(fd, &count, sizeof count) != sizeof count) { perror("read count"); return 1; }
	printf("hwbp_exec %s: %llu hits for %ld getppid calls\n", sym, (unsigned long long)count, n);
	return count == (uint64_t)n ? 0 : 1;
}
