// Static key flips against readers on every CPU (kdbt_skey.ko,
// tests/vm/t-static_key.sh). /proc/kdbt_skey reads "<branch> <seq before>
// <seq after>"; writing "1"/"0" flips the key, the sequence counter odd
// while the kernel patches the branch.
//
//   skey lockstep FLIPS    one reader thread pinned to each online CPU;
//       after each flip every reader reads twice (then waits for the next
//       flip): both reads must show the new state and the counter the flip
//       left (no flip is in progress then). Deterministic: a CPU running a
//       stale copy of the branch fails.
//   skey concurrent FLIPS  the readers read in a loop while the main thread
//       flips: a read with equal, even counters ran between two flips and
//       its branch must be (seq / 2) % 2; reads that overlapped a flip are
//       counted, not judged. Readers run the branch while it holds the
//       kernel's int3.
//
// Prints flips, readers, reads, overlaps, stable reads per state and
// mismatches; exits 1 on a mismatch, a failed read, a reader on the wrong
// CPU, or (concurrent) no stable read of either state.
// usage: skey lockstep|concurrent FLIPS
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROC "/proc/kdbt_skey"
#define MAX_CPUS 64

struct reader {
	pthread_t thread;
	int cpu, fd;
	long reads, overlaps, stable[2], mismatches, errors;
	char first_mismatch[64];
};

static int lockstep, nreaders;
static volatile int done;
// lockstep: the state and counter every reader must see in this round.
static int want_branch;
static unsigned long want_seq;
static pthread_barrier_t round_start, round_end;

static int read_key(struct reader *r, int *branch, unsigned long *before, unsigned long *after)
{
	char buf[64];
	ssize_t n = pread(r->fd, buf, sizeof buf - 1, 0);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	if (sscanf(buf, "%d %lu %lu", branch, before, after) != 3)
		return -1;
	r->reads++;
	return 0;
}

static void mismatch(struct reader *r, int branch, unsigned long before, unsigned long after)
{
	if (!r->mismatches++)
		snprintf(r->first_mismatch, sizeof r->first_mismatch, "%d %lu %lu", branch, before, after);
}

static void judge_concurrent(struct reader *r, int branch, unsigned long before, unsigned long after)
{
	if (before != after || (before & 1))
		r->overlaps++;
	else if (branch != (int)((before / 2) % 2))
		mismatch(r, branch, before, after);
	else
		r->stable[branch]++;
}

static void *reader(void *arg)
{
	struct reader *r = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(r->cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) || sched_getcpu() != r->cpu)
		r->errors++;
	r->fd = open(PROC, O_RDONLY);
	if (r->fd < 0)
		r->errors++;
	int branch;
	unsigned long before, after;
	if (lockstep) {
		for (;;) {
			pthread_barrier_wait(&round_start);
			if (__atomic_load_n(&done, __ATOMIC_ACQUIRE))
				break;
			for (int i = 0; i < 2 && !r->errors; i++) {
				if (read_key(r, &branch, &before, &after)) {
					r->errors++;
					break;
				}
				if (branch != want_branch || before != want_seq || after != want_seq)
					mismatch(r, branch, before, after);
				else
					r->stable[branch]++;
			}
			pthread_barrier_wait(&round_end);
		}
	} else {
		while (!r->errors && !__atomic_load_n(&done, __ATOMIC_ACQUIRE)) {
			if (read_key(r, &branch, &before, &after)) {
				r->errors++;
				break;
			}
			judge_concurrent(r, branch, before, after);
		}
	}
	if (r->fd >= 0)
		close(r->fd);
	return NULL;
}

static int flip(int fd, int on)
{
	if (pwrite(fd, on ? "1" : "0", 1, 0) != 1) {
		perror("flip");
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 3 || (strcmp(argv[1], "lockstep") && strcmp(argv[1], "concurrent"))) {
		fprintf(stderr, "usage: skey lockstep|concurrent FLIPS\n");
		return 1;
	}
	lockstep = !strcmp(argv[1], "lockstep");
	long flips = atol(argv[2]);
	static struct reader readers[MAX_CPUS];
	cpu_set_t online;
	if (sched_getaffinity(0, sizeof online, &online)) {
		perror("sched_getaffinity");
		return 1;
	}
	int fd = open(PROC, O_RDWR);
	if (fd < 0) {
		perror(PROC);
		return 1;
	}
	// Start from the off state, and learn the counter.
	char buf[64];
	int branch;
	unsigned long seq, after;
	ssize_t n;
	if (flip(fd, 0) || (n = pread(fd, buf, sizeof buf - 1, 0)) <= 0) {
		perror("skey: first read");
		return 1;
	}
	buf[n] = 0;
	if (sscanf(buf, "%d %lu %lu", &branch, &seq, &after) != 3 || branch || seq != after || (seq & 1)) {
		printf("skey: first read after writing 0 is '%.*s', want '0 <even> <the same>'\n",
		       (int)strcspn(buf, "\n"), buf);
		return 1;
	}
	for (int c = 0; c < MAX_CPUS; c++)
		if (CPU_ISSET(c, &online))
			readers[nreaders++].cpu = c;
	pthread_barrier_init(&round_start, NULL, nreaders + 1);
	pthread_barrier_init(&round_end, NULL, nreaders + 1);
	for (int i = 0; i < nreaders; i++)
		if (pthread_create(&readers[i].thread, NULL, reader, &readers[i])) {
			perror("pthread_create");
			return 1;
		}
	if (!lockstep)
		usleep(10000);
	for (long i = 1; i <= flips; i++) {
		if (flip(fd, i % 2))
			return 1;
		if (lockstep) {
			want_branch = i % 2;
			want_seq = seq + 2 * i;
			pthread_barrier_wait(&round_start);
			pthread_barrier_wait(&round_end);
		}
	}
	if (flips % 2 && flip(fd, 0))
		return 1;
	if (!lockstep)
		usleep(10000);
	__atomic_store_n(&done, 1, __ATOMIC_RELEASE);
	if (lockstep)
		pthread_barrier_wait(&round_start);
	long reads = 0, overlaps = 0, stable[2] = { 0, 0 }, mismatches = 0, errors = 0;
	for (int i = 0; i < nreaders; i++) {
		struct reader *r = &readers[i];
		pthread_join(r->thread, NULL);
		reads += r->reads;
		overlaps += r->overlaps;
		stable[0] += r->stable[0];
		stable[1] += r->stable[1];
		mismatches += r->mismatches;
		errors += r->errors;
		if (r->mismatches)
			printf("cpu %d: %ld mismatches, first read '%s'\n", r->cpu, r->mismatches, r->first_mismatch);
		if (r->errors)
			printf("cpu %d: reader failed (affinity, open or read)\n", r->cpu);
	}
	printf("skey %s: %ld flips, %d readers, %ld reads, %ld overlaps, stable reads %ld off %ld on, %ld mismatches\n",
	       argv[1], flips, nreaders, reads, overlaps, stable[0], stable[1], mismatches);
	if (mismatches || errors)
		return 1;
	if (!stable[0] || (flips && !stable[1])) {
		printf("skey %s: no stable read of the %s state\n", argv[1], stable[0] ? "on" : "off");
		return 1;
	}
	return 0;
}
