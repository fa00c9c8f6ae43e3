/*
 * lmbench-style kernel microbenchmarks for kdbt's `make bench`.
 *
 * usage: lmbench [SCALE_PERCENT]     run every benchmark, print "name ns_per_op"
 *        lmbench --exit              exit at once (the image fork_exec executes)
 *
 * Each benchmark runs a short untimed warm-up, then five timed repetitions
 * (clock_gettime(CLOCK_MONOTONIC) around each) that share a fixed iteration
 * count, and prints the median ns per operation; SCALE_PERCENT (default 100)
 * scales every iteration count. Under QEMU -icount shift=0 the guest clock
 * advances 1 ns per guest instruction, so ns_per_op is guest instructions per
 * operation (instructions of both vCPUs). The suite runs on CPU 0 only. Under
 * kdbt, a "#kdbt name ..." line follows each result with dispatcher entries
 * per operation. Any failure prints "lmbench: FAIL ..." and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SELF "/kdbt/bin/lmbench"
#define PAGE 4096

static long scale = 100;

static void die(const char *what)
{
	printf("lmbench: FAIL %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts))
		die("clock_gettime");
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long iters(long base)
{
	long n = base * scale / 100;
	return n < 1 ? 1 : n;
}

#define REPS 5

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Median of REPS samples of ns per operation. */
static void report_median(const char *name, double *ns_per_op)
{
	qsort(ns_per_op, REPS, sizeof(double), cmp_double);
	printf("%s %.1f\n", name, ns_per_op[REPS / 2]);
	fflush(stdout);
}

/* A kdbt statistic (total over CPUs), or -1 when kdbt is not translating. */
static long kstat(const char *file)
{
	char path[128], buf[32];
	long v = -1;
	FILE *f = fopen("/sys/kernel/kdbt/enabled", "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f) || buf[0] != '1') {
		fclose(f);
		return -1;
	}
	fclose(f);
	snprintf(path, sizeof(path), "/sys/kernel/kdbt/stats/%s", file);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

struct kstats {
	long entries, misses, invalidated;
};

static struct kstats kstats_now(void)
{
	struct kstats k = { kstat("dispatcher_entries"), kstat("lookup_misses"),
			    kstat("blocks_invalidated") };
	return k;
}

/*
 * Under translation, a "#kdbt" line after the result: kdbt dispatcher entries
 * per operation, blocks translated (lookup misses) and translations
 * invalidated per operation during the timed repetitions, counted on all
 * CPUs. Informational; not part of the table.
 */
static void report_kstats(const char *name, struct kstats k0, long ops)
{
	struct kstats k1 = kstats_now();
	if (k0.entries < 0 || k1.entries < 0)
		return;
	printf("#kdbt %s dispatcher_entries_per_op %.2f lookup_misses %ld blocks_invalidated_per_op %.2f\n",
	       name, (double)(k1.entries - k0.entries) / (double)ops, k1.misses - k0.misses,
	       (double)(k1.invalidated - k0.invalidated) / (double)ops);
	fflush(stdout);
}

/*
 * Runs body untimed for a tenth of the count (warm-up), then REPS timed
 * repetitions of a fifth of it each; prints the median ns per operation.
 */
static void bench(const char *name, long base, void (*body)(long))
{
	long n = iters(base) / REPS;
	double s[REPS];
	if (n < 1)
		n = 1;
	body(n / 2 > 0 ? n / 2 : 1);
	struct kstats k0 = kstats_now();
	for (int r = 0; r < REPS; r++) {
		uint64_t t0 = now_ns();
		body(n);
		s[r] = (double)(now_ns() - t0) / (double)n;
	}
	report_median(name, s);
	report_kstats(name, k0, REPS * n);
}

/*
 * A code change: kdbt_skey.ko's static key on, then off (two text_poke_bp
 * patches of its branch, each with the kernel's three IPI rounds). Translated,
 * each also invalidates the branch's translations on every CPU.
 */
static int skey = -1;

static void b_static_key(long n)
{
	for (long i = 0; i < n; i++)
		if (pwrite(skey, "1", 1, 0) != 1 || pwrite(skey, "0", 1, 0) != 1)
			die("write /proc/kdbt_skey");
}

static void b_null(long n)
{
	for (long i = 0; i < n; i++)
		syscall(SYS_getppid);
}

static int devnull = -1;

static void b_read(long n)
{
	char c;
	for (long i = 0; i < n; i++)
		if (read(devnull, &c, 1) != 0)
			die("read /dev/null");
}

static void b_write(long n)
{
	char c = 0;
	for (long i = 0; i < n; i++)
		if (write(devnull, &c, 1) != 1)
			die("write /dev/null");
}

static void b_open_close(long n)
{
	for (long i = 0; i < n; i++) {
		int fd = open("/dev/null", O_RDONLY);
		if (fd < 0)
			die("open /dev/null");
		close(fd);
	}
}

static void b_stat(long n)
{
	struct stat st;
	for (long i = 0; i < n; i++)
		if (stat(SELF, &st))
			die("stat " SELF);
}

/* Round trips of one byte between this process and a child echoing it back. */
static void round_trip(long n, int to_child, int from_child, int child_in, int child_out,
		       const char *what)
{
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		char c;
		close(to_child);
		close(from_child);
		while (read(child_in, &c, 1) == 1)
			if (write(child_out, &c, 1) != 1)
				_exit(1);
		_exit(0);
	}
	close(child_in);
	close(child_out);
	for (long i = 0; i < n; i++) {
		char c = (char)i;
		if (write(to_child, &c, 1) != 1 || read(from_child, &c, 1) != 1)
			die(what);
	}
	close(to_child);
	close(from_child);
	int status;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		die(what);
}

static void b_pipe(long n)
{
	int a[2], b[2];
	if (pipe(a) || pipe(b))
		die("pipe");
	round_trip(n, a[1], b[0], a[0], b[1], "pipe round trip");
}

static void b_unix(long n)
{
	int sv[2], sv2[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		die("socketpair");
	/* round_trip closes four descriptors; give each side its own pair of ends. */
	int p = dup(sv[0]), c = dup(sv[1]);
	if (p < 0 || c < 0)
		die("dup");
	sv2[0] = p;
	sv2[1] = c;
	round_trip(n, sv[0], sv2[0], sv[1], sv2[1], "unix socket round trip");
}

static void wait_ok(pid_t pid, const char *what)
{
	int status;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		die(what);
}

static void b_fork_exit(long n)
{
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0)
			_exit(0);
		wait_ok(pid, "fork+exit");
	}
}

static void b_fork_exec(long n)
{
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			char *argv[] = { SELF, "--exit", NULL };
			char *envp[] = { NULL };
			execve(SELF, argv, envp);
			_exit(127);
		}
		wait_ok(pid, "fork+exec");
	}
}

#define FAULT_PAGES 256

/* ns per page: first touch of each page of a fresh anonymous mapping. */
static void b_page_fault_report(void)
{
	long rounds = iters(160) / REPS;
	double s[REPS];
	if (rounds < 1)
		rounds = 1;
	struct kstats k0 = { -1, -1 };
	for (int r = -1; r < REPS; r++) {	/* repetition -1 is the warm-up */
		uint64_t total = 0;
		if (r == 0)
			k0 = kstats_now();
		for (long k = 0; k < rounds; k++) {
			volatile char *p = mmap(NULL, FAULT_PAGES * PAGE, PROT_READ | PROT_WRITE,
						MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED)
				die("mmap");
			uint64_t t0 = now_ns();
			for (long i = 0; i < FAULT_PAGES; i++)
				p[i * PAGE] = 1;
			total += now_ns() - t0;
			if (munmap((void *)p, FAULT_PAGES * PAGE))
				die("munmap");
		}
		if (r >= 0)
			s[r] = (double)total / (double)(rounds * FAULT_PAGES);
	}
	report_median("page_fault", s);
	/* Per page, but counting the untimed mmap and munmap too. */
	report_kstats("page_fault", k0, REPS * rounds * FAULT_PAGES);
}

#define MAP_LEN (1024 * 1024)

static void b_mmap(long n)
{
	for (long i = 0; i < n; i++) {
		void *p = mmap(NULL, MAP_LEN, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			die("mmap");
		if (munmap(p, MAP_LEN))
			die("munmap");
	}
}

static volatile sig_atomic_t caught;
static void on_usr1(int sig)
{
	(void)sig;
	caught++;
}

static void b_signal(long n)
{
	pid_t self = getpid();
	caught = 0;
	for (long i = 0; i < n; i++)
		if (kill(self, SIGUSR1))
			die("kill");
	if (caught != n) {
		errno = 0;
		die("signal count");
	}
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "--exit") == 0)
		_exit(0);
	if (argc > 1) {
		scale = strtol(argv[1], NULL, 10);
		if (scale <= 0) {
			fprintf(stderr, "usage: lmbench [SCALE_PERCENT] | --exit\n");
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	/*
	 * Everything (children inherit it) runs on CPU 0: figures do not depend
	 * on where the scheduler places a process, and kdbt's code caches are
	 * per CPU, so a translated figure would otherwise depend on which CPU's
	 * cache served it. Round trips are same-CPU context switches.
	 */
	cpu_set_t cpu0;
	CPU_ZERO(&cpu0);
	CPU_SET(0, &cpu0);
	if (sched_setaffinity(0, sizeof(cpu0), &cpu0))
		die("sched_setaffinity");
	devnull = open("/dev/null", O_RDWR);
	if (devnull < 0)
		die("open /dev/null");
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction");

	bench("null_syscall", 100000, b_null);
	bench("read_devnull", 100000, b_read);
	bench("write_devnull", 100000, b_write);
	bench("open_close", 20000, b_open_close);
	bench("stat", 20000, b_stat);
	bench("pipe_rtt", 20000, b_pipe);
	bench("unix_rtt", 20000, b_unix);
	bench("fork_exit", 1000, b_fork_exit);
	bench("fork_exec", 400, b_fork_exec);
	b_page_fault_report();
	bench("mmap_munmap", 20000, b_mmap);
	bench("signal", 40000, b_signal);
	skey = open("/proc/kdbt_skey", O_WRONLY);
	if (skey >= 0)
		bench("static_key_flip", 2000, b_static_key);
	return 0;
}
