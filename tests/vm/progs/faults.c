// Faults and exceptions whose handling must look the same translated as
// natively: user SIGSEGV and SIGFPE delivered to handlers, read() into a bad
// pointer failing with EFAULT, and demand-paging page faults.
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>

static sigjmp_buf env;
static volatile int last_signal;

static void handler(int sig, siginfo_t *si, void *uc)
{
	(void)si; (void)uc;
	last_signal = sig;
	siglongjmp(env, 1);
}

int main(void)
{
	struct sigaction sa = { .sa_sigaction = handler, .sa_flags = SA_SIGINFO };
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGFPE, &sa, NULL);

	int *volatile null_ish = (int *)16;
	if (sigsetjmp(env, 1) == 0)
		*null_ish = 1;
	printf("segv: signal %d\n", last_signal);

	/* Both operands volatile: gcc turns 1 / x into compares, not idiv. */
	volatile int zero = 0, seven = 7;
	last_signal = 0;
	if (sigsetjmp(env, 1) == 0)
		printf("%d\n", seven / zero);
	printf("fpe: signal %d\n", last_signal);

	int fd = open("/proc/self/cmdline", O_RDONLY);
	/* An unmapped user address, hidden from the compiler's bounds checks. */
	void *volatile bad = (void *)8;
	ssize_t r = read(fd, bad, 16);
	printf("read into bad pointer: %zd %s\n", r, r < 0 ? strerror(errno) : "");
	close(fd);

	const long pages = 2048;
	unsigned char *m = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned long sum = 0;
	for (long i = 0; i < pages; i++)
		m[i * 4096] = (unsigned char)i;
	for (long i = 0; i < pages; i++)
		sum += m[i * 4096];
	munmap(m, pages * 4096);
	printf("mmap touch %ld pages: sum %lu\n", pages, sum);
	return 0;
}
