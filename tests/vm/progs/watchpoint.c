// A perf write watchpoint on a user buffer that only the kernel writes:
// PERF_TYPE_BREAKPOINT, HW_BREAKPOINT_W, 8 bytes at &buf[0], a sample for
// every hit (PERF_SAMPLE_IP, kernel included). The kernel then writes buf
// with read() from /dev/zero and from a pipe; the sampled IPs are mapped to
// symbols with /proc/kallsyms and printed, one line per sample:
//   "sample <n>: <function> kernel-text" (in _stext.._etext)
//   "sample <n>: <function> [module] NOT-KERNEL-TEXT"
// The list must be the same translated as natively. Exit 1 when there is no
// sample or a sample outside kernel text.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DATA_PAGES 8

struct sym { uint64_t addr; char name[400]; };
static struct sym *syms;
static size_t nsyms;
static uint64_t stext, etext;

static int by_addr(const void *a, const void *b)
{
	uint64_t x = ((const struct sym *)a)->addr, y = ((const struct sym *)b)->addr;
	return x < y ? -1 : x > y;
}

static void load_kallsyms(void)
{
	FILE *f = fopen("/proc/kallsyms", "r");
	if (!f) { perror("/proc/kallsyms"); exit(1); }
	size_t cap = 0;
	char line[512];
	while (fgets(line, sizeof line, f)) {
		unsigned long long a;
		char type, name[256], mod[128] = "";
		int n = sscanf(line, "%llx %c %255s %127s", &a, &type, name, mod);
		if (n < 3)
			continue;
		if (strcmp(name, "_stext") == 0) stext = a;
		if (strcmp(name, "_etext") == 0) etext = a;
		if (type != 't' && type != 'T')
			continue;
		if (nsyms == cap) {
			cap = cap ? 2 * cap : 16384;
			syms = realloc(syms, cap * sizeof *syms);
			if (!syms) { perror("realloc"); exit(1); }
		}
		syms[nsyms].addr = a;
		snprintf(syms[nsyms].name, sizeof syms[nsyms].name, "%s%s%s", name, n == 4 ? " " : "", n == 4 ? mod : "");
		nsyms++;
	}
	fclose(f);
	qsort(syms, nsyms, sizeof *syms, by_addr);
	if (!nsyms || !stext || !etext || stext >= etext || syms[0].addr == 0) {
		fprintf(stderr, "/proc/kallsyms unusable: %zu text symbols, _stext %#llx _etext %#llx\n",
			nsyms, (unsigned long long)stext, (unsigned long long)etext);
		exit(1);
	}
}

static const char *symbol(uint64_t ip)
{
	size_t lo = 0, hi = nsyms;
	while (hi - lo > 1) {
		size_t mid = (lo + hi) / 2;
		if (syms[mid].addr <= ip) lo = mid; else hi = mid;
	}
	return syms[lo].addr <= ip ? syms[lo].name : "?";
}

int main(void)
{
	load_kallsyms();
	static char buf[4096] __attribute__((aligned(64)));
	memset(buf, 1, sizeof buf); /* user writes happen before the event exists */

	struct perf_event_attr attr;
	memset(&attr, 0, sizeof attr);
	attr.type = PERF_TYPE_BREAKPOINT;
	attr.size = sizeof attr;
	attr.bp_type = HW_BREAKPOINT_W;
	attr.bp_addr = (uint64_t)(uintptr_t)&buf[0];
	attr.bp_len = HW_BREAKPOINT_LEN_8;
	attr.sample_period = 1;
	attr.sample_type = PERF_SAMPLE_IP;
	attr.wakeup_events = 1;
	attr.disabled = 1;
	attr.exclude_user = 0;
	attr.exclude_kernel = 0;
	int fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
	if (fd < 0) { perror("perf_event_open(HW_BREAKPOINT_W)"); return 1; }
	long page = sysconf(_SC_PAGESIZE);
	size_t len = (1 + DATA_PAGES) * page;
	struct perf_event_mmap_page *meta = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (meta == MAP_FAILED) { perror("mmap perf ring"); return 1; }

	int zero = open("/dev/zero", O_RDONLY);
	int p[2];
	if (zero < 0 || pipe(p)) { perror("open /dev/zero / pipe"); return 1; }
	static const char msg[64] = "written into buf by the kernel's copy_to_user";

	ioctl(fd, PERF_EVENT_IOC_RESET, 0);
	ioctl(fd, PERF_EVENT_IOC_ENABLE, 0);
	int bad = 0;
	for (int i = 0; i < 3; i++) {
		if (read(zero, buf, 64) != 64) bad = 1;
		if (write(p[1], msg, sizeof msg) != sizeof msg) bad = 1;
		if (read(p[0], buf, sizeof msg) != sizeof msg) bad = 1;
	}
	ioctl(fd, PERF_EVENT_IOC_DISABLE, 0);
	if (bad) { fprintf(stderr, "a read/write failed\n"); return 1; }
	if (memcmp(buf, msg, sizeof msg)) { fprintf(stderr, "buf does not hold what the kernel wrote\n"); return 1; }

	uint64_t count = 0;
	if (read(fd, &count, sizeof count) != sizeof count) { perror("read count"); return 1; }

	uint64_t head = __atomic_load_n(&meta->data_head, __ATOMIC_ACQUIRE);
	uint64_t off = meta->data_offset ? meta->data_offset : (uint64_t)page;
	uint64_t size = meta->data_size ? meta->data_size : (uint64_t)DATA_PAGES * page;
	unsigned char *data = (unsigned char *)meta + off;
	int samples = 0, lost = 0, outside = 0;
	for (uint64_t tail = meta->data_tail; tail < head;) {
		unsigned char rec[256];
		struct perf_event_header h;
		for (size_t i = 0; i < sizeof h; i++) ((unsigned char *)&h)[i] = data[(tail + i) % size];
		if (h.size < sizeof h || h.size > sizeof rec) { fprintf(stderr, "bad record size %u\n", h.size); return 1; }
		for (size_t i = 0; i < h.size; i++) rec[i] = data[(tail + i) % size];
		tail += h.size;
		if (h.type == PERF_RECORD_LOST) { lost++; continue; }
		if (h.type != PERF_RECORD_SAMPLE) continue;
		uint64_t ip;
		memcpy(&ip, rec + sizeof h, sizeof ip);
		int in_text = ip >= stext && ip < etext;
		outside += !in_text;
		printf("sample %d: %s %s\n", ++samples, symbol(ip), in_text ? "kernel-text" : "NOT-KERNEL-TEXT");
		if (!in_text)
			fprintf(stderr, "  ip %#llx is outside _stext..%#llx\n", (unsigned long long)ip, (unsigned long long)etext);
	}
	printf("watchpoint: %d samples, count %llu, lost records %d\n", samples, (unsigned long long)count, lost);
	if (samples == 0 || outside || lost)
		return 1;
	return 0;
}
