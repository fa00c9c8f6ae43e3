// Pipe ping-pong between two processes that move to another CPU before every
// round: each wakeup lands on a CPU the task was not on, in the middle of
// deep kernel call chains (pipe_read/pipe_write, the scheduler, the
// migration stopper that `sched_setaffinity` waits for).
// `migrate ROUNDS`: prints "rounds R sum S" (the same natively and
// translated) and, on stderr, "migrations M" (how many rounds each process
// ran on a CPU other than its previous one, summed over both).
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int ncpus;
static int cpus[1024];

static int move_on(int round, int who)
{
	cpu_set_t set;
	int before = sched_getcpu();
	CPU_ZERO(&set);
	CPU_SET(cpus[(round + who) % ncpus], &set);
	if (sched_setaffinity(0, sizeof set, &set))
		return -1;
	return sched_getcpu() != before;
}

static int xfer(int fd, void *buf, size_t n, int out)
{
	ssize_t r = out ? write(fd, buf, n) : read(fd, buf, n);
	return r == (ssize_t)n ? 0 : -1;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 1000;
	int to_child[2], to_parent[2], counts[2];
	cpu_set_t all;
	if (sched_getaffinity(0, sizeof all, &all))
		return 1;
	for (int c = 0; c < CPU_SETSIZE && ncpus < 1024; c++)
		if (CPU_ISSET(c, &all))
			cpus[ncpus++] = c;
	if (ncpus < 2) {
		fprintf(stderr, "migrate: needs 2 CPUs, has %d\n", ncpus);
		return 2;
	}
	if (pipe(to_child) || pipe(to_parent) || pipe(counts))
		return 1;
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		int moved = 0;
		for (int i = 0; i < rounds; i++) {
			unsigned long v;
			int m = move_on(i, 1);
			if (m < 0 || xfer(to_child[0], &v, sizeof v, 0))
				_exit(1);
			moved += m;
			v = v * 6364136223846793005ul + 1442695040888963407ul;
			if (xfer(to_parent[1], &v, sizeof v, 1))
				_exit(1);
		}
		_exit(write(counts[1], &moved, sizeof moved) == sizeof moved ? 0 : 1);
	}
	unsigned long v = 1, sum = 0;
	int moved = 0, child_moved = 0, status;
	for (int i = 0; i < rounds; i++) {
		int m = move_on(i, 0);
		if (m < 0 || xfer(to_child[1], &v, sizeof v, 1) || xfer(to_parent[0], &v, sizeof v, 0)) {
			fprintf(stderr, "migrate: round %d failed\n", i);
			return 1;
		}
		moved += m;
		sum ^= v + i;
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		return 1;
	if (read(counts[0], &child_moved, sizeof child_moved) != sizeof child_moved)
		return 1;
	printf("rounds %d sum %lx\n", rounds, sum);
	fprintf(stderr, "migrations %d\n", moved + child_moved);
	return 0;
}
