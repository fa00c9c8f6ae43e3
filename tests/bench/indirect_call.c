/* Microbenchmark of docs/requests-user-check.md item 5: a loop calling mid(fp, i), which
 * calls fp twice, 3e7 times. With the argument "direct", mid calls the function directly.
 * Build: gcc -O2 -static -o /tmp/indirect_call tests/bench/indirect_call.c
 * Run:   /tmp/indirect_call; target/release/kdbt-user run [--fast] -- /tmp/indirect_call */
#include <stdio.h>
#include <string.h>

typedef long (*fn)(long);

__attribute__((noinline)) static long add3(long x) { return x + 3; }

__attribute__((noinline)) static long mid(fn f, long i) { return f(i) ^ f(i + 1); }

__attribute__((noinline)) static long mid_direct(long i) { return add3(i) ^ add3(i + 1); }

int main(int argc, char **argv)
{
	fn volatile f = add3;
	int direct = argc > 1 && strcmp(argv[1], "direct") == 0;
	long sum = 0;
	for (long i = 0; i < 30000000; i++)
		sum += direct ? mid_direct(i) : mid(f, i);
	printf("%ld\n", sum);
	return 0;
}
