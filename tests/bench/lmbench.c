/*
 * lmbench-style kernel microbenchmarks for kdbt's `make bench`.
 *
 * usage: lmbench [SCALE_PERCENT]     run every benchmark, print "name ns_per_op"
 *        lmbench --exit              exit at once (the image fork_exec executes)
 *
 * Each benchmark runs a short untimed warm-up, then a fixed number of
 * iterations timed with clock_gettime(CLOCK_MONOTONIC); SCALE_PERCENT (default
 * 100) scales every iteration count. Under QEMU -icount shift=0 the guest clock
 * advances 1 ns per guest instruction, so ns_per_op is guest instructions per
 * operation. Any failure prints "lmbench: FAIL ..." and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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

static void report(const char *name, uint64_t ns, long ops)
{
	printf("%s %.1f\n", name, (double)ns / (double)ops);
	fflush(stdout);
}

/* Runs body(n) untimed for a tenth of the count, then timed; prints the result. */
static void bench(const char *name, long base, void (*body)(long))
{
	long n = iters(base);
	body(n / 10 > 0 ? n / 10 : 1);
	uint64_t t0 = now_ns();
	body(n);
	report(name, now_ns() - t0, n);
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
	long rounds = iters(40);
	uint64_t total = 0;
	for (long r = -1; r < rounds; r++) {	/* round -1 is the warm-up */
		volatile char *p = mmap(NULL, FAULT_PAGES * PAGE, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			die("mmap");
		uint64_t t0 = now_ns();
		for (long i = 0; i < FAULT_PAGES; i++)
			p[i * PAGE] = 1;
		uint64_t t1 = now_ns();
		if (r >= 0)
			total += t1 - t0;
		if (munmap((void *)p, FAULT_PAGES * PAGE))
			die("munmap");
	}
	report("page_fault", total, rounds * FAULT_PAGES);
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
	devnull = open("/dev/null", O_RDWR);
	if (devnull < 0)
		die("open /dev/null");
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction");

	bench("null_syscall", 20000, b_null);
	bench("read_devnull", 20000, b_read);
	bench("write_devnull", 20000, b_write);
	bench("open_close", 5000, b_open_close);
	bench("stat", 5000, b_stat);
	bench("pipe_rtt", 5000, b_pipe);
	bench("unix_rtt", 5000, b_unix);
	bench("fork_exit", 200, b_fork_exit);
	bench("fork_exec", 100, b_fork_exec);
	b_page_fault_report();
	bench("mmap_munmap", 5000, b_mmap);
	bench("signal", 10000, b_signal);
	return 0;
}
