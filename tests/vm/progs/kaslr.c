// What an unprivileged user can learn of kernel addresses: drops to uid/gid
// 1000, prints the descriptor-table registers as user space sees them (sidt,
// sgdt: the kernel's UMIP emulation answers with fixed dummy bases, so the
// lines must be the same natively and translated), then reads every file
// under each directory given and prints "leak: FILE VALUE" for any number in
// it that could be a kernel address (>= 2^47, decimal or hex). Exit 0.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct __attribute__((packed)) dtr {
	uint16_t limit;
	uint64_t base;
};

static void scan_value(const char *path, const char *buf)
{
	const char *p = buf;

	while (*p) {
		char *end;
		int hex = p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
		unsigned long long v = strtoull(p, &end, hex ? 16 : 10);

		if (end == p) {
			p++;
			continue;
		}
		if (v >= 1ULL << 47)
			printf("leak: %s %llu\n", path, v);
		p = end;
	}
}

static void scan(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[4096], buf[4096];
		ssize_t n;
		int fd;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (e->d_type == DT_DIR) {
			scan(path);
			continue;
		}
		fd = open(path, O_RDONLY);
		if (fd < 0)
			continue;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0)
			continue;
		buf[n] = 0;
		scan_value(path, buf);
	}
	closedir(d);
}

int main(int argc, char **argv)
{
	struct dtr idt = { 0 }, gdt = { 0 };

	if (setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000)) {
		perror("dropping to uid 1000");
		return 1;
	}
	__asm__ volatile("sidt %0" : "=m"(idt));
	__asm__ volatile("sgdt %0" : "=m"(gdt));
	printf("sidt: base %#" PRIx64 " limit %#x\n", idt.base, idt.limit);
	printf("sgdt: base %#" PRIx64 " limit %#x\n", gdt.base, gdt.limit);
	for (int i = 1; i < argc; i++)
		scan(argv[i]);
	return 0;
}
