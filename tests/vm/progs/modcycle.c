// Module load/read/unload cycles for tests/vm/t-module_reuse.sh: CYCLES
// times, alternately kdbt_reuse_a.ko and kdbt_reuse_b.ko (from
// /kdbt/modules) is loaded (finit_module), /proc/kdbt_reuse is read on every
// online CPU (sched_setaffinity) and must be the variant's LINE_A or LINE_B,
// and the module is unloaded (delete_module). Counts the loads whose .text
// (/sys/module/<name>/sections/.text) is the previous module's.
// Prints one line of totals (and the first wrong read); exits 1 on a wrong
// read or a failed load, read or unload.
// usage: modcycle CYCLES LINE_A LINE_B
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

static int pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof set, &set);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: modcycle CYCLES LINE_A LINE_B\n");
		return 1;
	}
	long cycles = atol(argv[1]);
	const char *want[2] = { argv[2], argv[3] };
	cpu_set_t online;
	if (sched_getaffinity(0, sizeof online, &online)) {
		perror("sched_getaffinity");
		return 1;
	}
	long reads = 0, wrong = 0, reused = 0;
	char prev[64] = "", text[64], got[128], first_wrong[320] = "";
	for (long i = 0; i < cycles; i++) {
		int v = i % 2;
		char name[32], path[96];
		snprintf(name, sizeof name, "kdbt_reuse_%c", "ab"[v]);
		snprintf(path, sizeof path, "/kdbt/modules/%s.ko", name);
		int fd = open(path, O_RDONLY);
		if (fd < 0 || syscall(SYS_finit_module, fd, "", 0)) {
			fprintf(stderr, "cycle %ld: loading %s: %m\n", i, path);
			return 1;
		}
		close(fd);
		snprintf(path, sizeof path, "/sys/module/%s/sections/.text", name);
		if (read_file(path, text, sizeof text)) {
			fprintf(stderr, "cycle %ld: %s: %m\n", i, path);
			return 1;
		}
		reused += !strcmp(text, prev);
		strcpy(prev, text);
		for (int c = 0; c < CPU_SETSIZE; c++) {
			if (!CPU_ISSET(c, &online))
				continue;
			if (pin(c) || read_file("/proc/kdbt_reuse", got, sizeof got)) {
				fprintf(stderr, "cycle %ld: reading /proc/kdbt_reuse on CPU %d: %m\n", i, c);
				return 1;
			}
			reads++;
			if (strcmp(got, want[v]) && !wrong++)
				snprintf(first_wrong, sizeof first_wrong, "cycle %ld, %s at .text %s, CPU %d: '%s'",
					 i, name, text, c, got);
		}
		if (syscall(SYS_delete_module, name, O_NONBLOCK)) {
			fprintf(stderr, "cycle %ld: unloading %s: %m\n", i, name);
			return 1;
		}
	}
	printf("modcycle: %ld cycles, %ld reads, %ld wrong; %ld of %ld loads at the previous module's .text\n",
	       cycles, reads, wrong, reused, cycles - 1);
	if (wrong)
		printf("modcycle: first wrong read: %s\n", first_wrong);
	return wrong ? 1 : 0;
}
