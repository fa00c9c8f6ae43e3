// Holds per-task software perf events on itself until killed, so that the
// kernel's perf static keys patched in the scheduler's hot paths
// (perf_sched_events, and the context-switch and migration software-event
// keys) are flipped once, at a quiet moment, and never again while the
// tests open and close their own perf events (hardware breakpoints, the
// kernel selftests' ptrace watchpoints). Under QEMU's multi-threaded TCG a
// vCPU translating a jump-label site while another writes the patch's final
// byte can keep a stale translation of the temporary int3 (docs/testing.md,
// "Known flake"). Prints "held N" once the events are open, then sleeps.
#include <linux/perf_event.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
	static const unsigned long long configs[] = {
		PERF_COUNT_SW_CONTEXT_SWITCHES,
		PERF_COUNT_SW_CPU_MIGRATIONS,
	};
	int held = 0;
	for (unsigned i = 0; i < sizeof configs / sizeof configs[0]; i++) {
		struct perf_event_attr attr;
		memset(&attr, 0, sizeof attr);
		attr.size = sizeof attr;
		attr.type = PERF_TYPE_SOFTWARE;
		attr.config = configs[i];
		if (syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0) < 0) {
			perror("perf_event_open");
			return 1;
		}
		held++;
	}
	printf("held %d\n", held);
	fflush(stdout);
	for (;;)
		pause();
}
