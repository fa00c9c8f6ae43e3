// A hostile user GS base: drops to uid/gid 1000, sets its GS base to a
// kernel-half address with wrgsbase (mode "wrgsbase") or to a user address
// with arch_prctl(ARCH_SET_GS) (mode "arch_prctl"), then spins in user mode
// for ~3 s taking SIGALRM every 10 ms, checks the GS base is still what it
// set, and exits 0 without restoring anything.
// Output: "gsbase <mode> ok" (deterministic, compared with the native run)
// and "signals: N" (not compared). Exit 4 (KTAP skip) without FSGSBASE.
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef HWCAP2_FSGSBASE
#define HWCAP2_FSGSBASE (1 << 1)
#endif
#define KERNEL_GSBASE 0xffffffff81000000UL /* kernel text: as hostile as it gets */
#define RUN_NS 3000000000LL
#define GIVE_UP_NS 30000000000LL
/* Of about 300 SIGALRMs: far fewer arrive when the host is loaded. */
#define MIN_SIGNALS 10

static volatile sig_atomic_t done;
static volatile long signals;
static struct timespec start;

static long long elapsed_ns(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - start.tv_sec) * 1000000000LL + (now.tv_nsec - start.tv_nsec);
}

static void on_alarm(int sig)
{
	(void)sig;
	signals++;
	if (elapsed_ns() >= RUN_NS)
		done = 1;
}

static unsigned long rdgsbase(void)
{
	unsigned long v;
	asm volatile("rdgsbase %0" : "=r"(v));
	return v;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "wrgsbase";
	/* Unprivileged before anything else. */
	if (setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000)) {
		perror("setresgid/setresuid");
		return 1;
	}
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	if (getresuid(&ru, &eu, &su) || getresgid(&rg, &eg, &sg) ||
	    ru != 1000 || eu != 1000 || su != 1000 || rg != 1000 || eg != 1000 || sg != 1000) {
		fprintf(stderr, "still privileged: uid %d/%d/%d gid %d/%d/%d\n", ru, eu, su, rg, eg, sg);
		return 1;
	}
	int fsgsbase = (getauxval(AT_HWCAP2) & HWCAP2_FSGSBASE) != 0;

	unsigned long want;
	static char user_gs_area[4096];
	if (strcmp(mode, "wrgsbase") == 0) {
		if (!fsgsbase) {
			printf("no FSGSBASE (AT_HWCAP2 %#lx): skipping\n", getauxval(AT_HWCAP2));
			return 4;
		}
		want = KERNEL_GSBASE;
	} else if (strcmp(mode, "arch_prctl") == 0) {
		want = (unsigned long)user_gs_area;
	} else {
		fprintf(stderr, "usage: gsbase wrgsbase|arch_prctl\n");
		return 1;
	}

	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	clock_gettime(CLOCK_MONOTONIC, &start);

	if (want == KERNEL_GSBASE) {
		asm volatile("wrgsbase %0" : : "r"(want) : "memory");
	} else if (syscall(SYS_arch_prctl, ARCH_SET_GS, want) != 0) {
		perror("arch_prctl(ARCH_SET_GS)");
		return 1;
	}

	struct itimerval it = { { 0, 10000 }, { 0, 10000 } };
	if (setitimer(ITIMER_REAL, &it, NULL)) {
		perror("setitimer");
		return 1;
	}
	/* User mode only (no syscalls: clock_gettime is the vDSO) until done. */
	unsigned long spins = 0;
	while (!done) {
		if ((++spins & 0xfffff) == 0 && elapsed_ns() > GIVE_UP_NS)
			break;
	}
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &off, NULL);

	unsigned long got;
	if (want == KERNEL_GSBASE)
		got = rdgsbase();
	else if (syscall(SYS_arch_prctl, ARCH_GET_GS, &got) != 0)
		got = 0;
	if (got != want) {
		printf("gs base %#lx after the run, want %#lx\n", got, want);
		return 1;
	}
	/* rdgsbase needs CR4.FSGSBASE; without it the arch_prctl value was checked above. */
	if (fsgsbase && rdgsbase() != want) {
		printf("rdgsbase %#lx, want %#lx\n", rdgsbase(), want);
		return 1;
	}
	printf("signals: %ld in %lld ms\n", signals, elapsed_ns() / 1000000);
	if (!done || signals < MIN_SIGNALS) {
		printf("too few signals: %ld (want >= %d)\n", signals, MIN_SIGNALS);
		return 1;
	}
	printf("gsbase %s ok\n", mode);
	return 0;
}
