// A lock-heavy load across two CPUs (tests/vm/t-smp_alternatives.sh): for
// SECONDS, pairs of threads, one pinned to CPU_A and one to CPU_B, do
//   mutex    pthread mutex lock, shared counter++, unlock (contended: futex
//            wait/wake in the kernel)
//   atomic   __atomic_fetch_add on a shared counter
//   append   16-byte records written to one O_APPEND file on tmpfs: the
//            kernel's inode lock serialises the appends, so a broken kernel
//            lock shows as overwritten or torn records
//   pipe     ping-pong of a sequence number through two pipes
// Each thread counts what it did; at the end every shared total must equal
// the sum of the threads' counts exactly (the file holds exactly the records
// written, each intact, and as many from each thread as it wrote), every
// pipe message must have carried the next number, and each thread must have
// run on its CPU.
// A watchdog fails the run if it hangs (a lost futex wake-up).
// Prints one line per check; exits 1 on any mismatch.
// usage: locks SECONDS CPU_A CPU_B (the file: /tmp/locks.append, removed)
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile int stop;
static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static long mutex_total, atomic_total;
#define APPEND_FILE "/tmp/locks.append"
#define RECORD 16
#define MAX_RECORDS 1000000 /* per thread: 16 MB of tmpfs at most */
static int afd, ping[2], pong[2];

struct worker {
	pthread_t thread;
	int cpu, side;
	void *(*fn)(struct worker *);
	long count, errors;
};

static int pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof set, &set) == 0 && sched_getcpu() == cpu;
}

static int stopped(void) { return __atomic_load_n(&stop, __ATOMIC_RELAXED); }

static void *mutex_worker(struct worker *w)
{
	while (!stopped()) {
		pthread_mutex_lock(&mutex);
		mutex_total++;
		pthread_mutex_unlock(&mutex);
		w->count++;
	}
	return NULL;
}

static void *atomic_worker(struct worker *w)
{
	while (!stopped()) {
		__atomic_fetch_add(&atomic_total, 1, __ATOMIC_SEQ_CST);
		w->count++;
	}
	return NULL;
}

static void *append_worker(struct worker *w)
{
	char rec[40];
	while (!stopped() && w->count < MAX_RECORDS) {
		snprintf(rec, sizeof rec, "%d %013ld\n", w->side & 1, w->count % 10000000000000L);
		if (write(afd, rec, RECORD) != RECORD) {
			w->errors++;
			break;
		}
		w->count++;
	}
	return NULL;
}

// Records in the file; per side in per_side; -1 if one is torn or out of
// its writer's order.
static long check_appends(long per_side[2])
{
	FILE *f = fopen(APPEND_FILE, "r");
	if (!f)
		return -1;
	char rec[64];
	long n = 0;
	per_side[0] = per_side[1] = 0;
	while (fgets(rec, sizeof rec, f)) {
		int side;
		long seq;
		if (strlen(rec) != RECORD || sscanf(rec, "%d %ld", &side, &seq) != 2 || side < 0 || side > 1 ||
		    seq != per_side[side]) {
			fclose(f);
			return -1;
		}
		per_side[side]++;
		n++;
	}
	fclose(f);
	return n;
}

// Side 0 sends n on ping and wants n + 1 back on pong; side 1 answers.
// Side 0 stops by closing ping; side 1 then sees EOF.
static void *pipe_worker(struct worker *w)
{
	uint64_t n = 0, m;
	if (w->side == 0) {
		while (!stopped()) {
			if (write(ping[1], &n, sizeof n) != sizeof n || read(pong[0], &m, sizeof m) != sizeof m || m != n + 1) {
				w->errors++;
				break;
			}
			n += 2;
			w->count++;
		}
		close(ping[1]);
	} else {
		ssize_t r;
		while ((r = read(ping[0], &m, sizeof m)) == sizeof m) {
			if (m != n) {
				w->errors++;
				break;
			}
			m++;
			if (write(pong[1], &m, sizeof m) != sizeof m) {
				w->errors++;
				break;
			}
			n += 2;
			w->count++;
		}
		if (r != 0 && !w->errors)
			w->errors++;
	}
	return NULL;
}

static void *start(void *arg)
{
	struct worker *w = arg;
	if (!pin(w->cpu)) {
		w->errors++;
		return NULL;
	}
	return w->fn(w);
}

static void watchdog(int sig)
{
	(void)sig;
	static const char msg[] = "locks: still running long after the deadline (a hang: lost wake-up?)\n";
	if (write(1, msg, sizeof msg - 1) < 0)
		_exit(3);
	_exit(2);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: locks SECONDS CPU_A CPU_B\n");
		return 1;
	}
	int seconds = atoi(argv[1]), cpu[2] = { atoi(argv[2]), atoi(argv[3]) };
	unlink(APPEND_FILE);
	afd = open(APPEND_FILE, O_WRONLY | O_CREAT | O_APPEND, 0600);
	if (afd < 0 || pipe(ping) || pipe(pong)) {
		perror("open/pipe");
		return 1;
	}
	signal(SIGALRM, watchdog);
	alarm(seconds * 3 + 60);
	static const struct { const char *name; void *(*fn)(struct worker *); } kinds[] = {
		{ "mutex", mutex_worker }, { "atomic", atomic_worker },
		{ "append", append_worker }, { "pipe", pipe_worker },
	};
	enum { KINDS = sizeof kinds / sizeof kinds[0] };
	static struct worker w[KINDS][2];
	for (int k = 0; k < KINDS; k++)
		for (int s = 0; s < 2; s++) {
			w[k][s] = (struct worker){ .cpu = cpu[s], .side = s, .fn = kinds[k].fn };
			if (pthread_create(&w[k][s].thread, NULL, start, &w[k][s])) {
				perror("pthread_create");
				return 1;
			}
		}
	sleep(seconds);
	__atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
	long errors = 0;
	for (int k = 0; k < KINDS; k++)
		for (int s = 0; s < 2; s++) {
			pthread_join(w[k][s].thread, NULL);
			errors += w[k][s].errors;
		}
	struct stat st;
	long per_side[2];
	long records = check_appends(per_side);
	if (fstat(afd, &st) || st.st_size != records * RECORD)
		records = -1;
	int bad = errors != 0 || (records >= 0 && (per_side[0] != w[2][0].count || per_side[1] != w[2][1].count));
	close(afd);
	unlink(APPEND_FILE);
	long totals[KINDS] = { mutex_total, atomic_total, records, w[3][1].count };
	for (int k = 0; k < KINDS; k++) {
		long a = w[k][0].count, b = w[k][1].count;
		// The pipe: both sides must count the same round trips.
		long want = k == 3 ? a : a + b;
		int ok = totals[k] == want && a > 0 && b > 0;
		printf("locks %s: %s (CPU %d %ld, CPU %d %ld, total %ld, want %ld)\n", kinds[k].name,
		       ok ? "ok" : "MISMATCH", cpu[0], a, cpu[1], b, totals[k], want);
		bad |= !ok;
	}
	if (errors)
		printf("locks: %ld thread errors (pinning, or a pipe message out of sequence)\n", errors);
	printf("locks: %s\n", bad ? "failed" : "all totals exact");
	return bad;
}
