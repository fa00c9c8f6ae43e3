// Unix-socket and TCP loopback echo between two processes; `sockets warm`:
// one TCP loopback connection in one process, nothing printed.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int echo_round_trips(int fd, int rounds)
{
	char buf[64], want[64];
	for (int i = 0; i < rounds; i++) {
		int n = snprintf(want, sizeof want, "message %d", i);
		if (write(fd, want, n) != n || read(fd, buf, sizeof buf) != n || memcmp(buf, want, n))
			return -1;
	}
	return rounds;
}

static void serve(int fd)
{
	char buf[64];
	ssize_t n;
	while ((n = read(fd, buf, sizeof buf)) > 0)
		if (write(fd, buf, n) != n)
			break;
	_exit(0);
}

/* The first TCP connection flips the kernel's once-only static key of
 * inet_ehashfn (net_get_random_once), patching its jump label. With no other
 * process in the TCP code meanwhile, no other vCPU can be running a stale
 * QEMU translation of the patch's temporary int3 (docs/testing.md). */
static int warm(void)
{
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof a;
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1) ||
	    getsockname(ls, (struct sockaddr *)&a, &len))
		return 1;
	int c = socket(AF_INET, SOCK_STREAM, 0);
	int r = c < 0 || connect(c, (struct sockaddr *)&a, sizeof a);
	close(c);
	close(ls);
	return r;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "warm"))
		return warm();
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		return 1;
	if (fork() == 0) {
		close(sv[0]);
		serve(sv[1]);
	}
	close(sv[1]);
	printf("unix echo: %d round trips\n", echo_round_trips(sv[0], 200));
	close(sv[0]);
	wait(NULL);

	int ls = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1))
		return 1;
	socklen_t len = sizeof a;
	getsockname(ls, (struct sockaddr *)&a, &len);
	if (fork() == 0) {
		int c = accept(ls, NULL, NULL);
		serve(c);
	}
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (struct sockaddr *)&a, sizeof a))
		return 1;
	printf("tcp echo: %d round trips\n", echo_round_trips(c, 200));
	close(c);
	wait(NULL);
	return 0;
}
