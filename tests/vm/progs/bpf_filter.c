// Classic BPF socket filters (SO_ATTACH_FILTER) on AF_UNIX datagram
// sockets, alternating: a socket pair whose receiver has an accept-all
// filter (ret #0xffffffff) gets all of MSGS datagrams; it is closed; a new
// pair whose receiver has a drop-all filter (ret #0) gets none (recv with
// MSG_DONTWAIT: EAGAIN; a poll with a timeout finds nothing late either). ROUNDS alternations, with
// a pause after each close so that the freed filter's JIT image (freed after
// an RCU grace period) is gone before the next one is compiled: the same
// bpf_prog_pack chunk is then reused for a program that does the opposite.
// Prints one line of totals; exits 1 on any wrong delivery.
// usage: bpf_filter [ROUNDS [MSGS]]
#include <errno.h>
#include <linux/filter.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

// Datagrams received of msgs sent through a new socket pair whose receiver
// filters with a single "ret #k"; -1 on a socket error.
static int round_trip(unsigned int k, int msgs)
{
	struct sock_filter code[] = { BPF_STMT(BPF_RET | BPF_K, k) };
	struct sock_fprog prog = { .len = 1, .filter = code };
	int sv[2], got = 0;
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv)) {
		perror("socketpair");
		return -1;
	}
	if (setsockopt(sv[1], SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog)) {
		perror("SO_ATTACH_FILTER");
		return -1;
	}
	for (int i = 0; i < msgs; i++) {
		char msg[32], buf[32];
		int n = snprintf(msg, sizeof msg, "datagram %d", i);
		if (send(sv[0], msg, n, 0) != n) {
			perror("send");
			return -1;
		}
		// AF_UNIX delivers in send(); wait for an accepted datagram anyway.
		struct pollfd p = { .fd = sv[1], .events = POLLIN };
		poll(&p, 1, k ? 50 : 0);
		ssize_t r = recv(sv[1], buf, sizeof buf, MSG_DONTWAIT);
		if (r == n && !memcmp(buf, msg, n))
			got++;
		else if (r >= 0 || errno != EAGAIN) {
			fprintf(stderr, "recv: %zd (%s)\n", r, r < 0 ? strerror(errno) : "wrong datagram");
			return -1;
		}
	}
	// Nothing may arrive late either (counted as passed).
	struct pollfd p = { .fd = sv[1], .events = POLLIN };
	char buf[32];
	poll(&p, 1, 20);
	while (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) >= 0)
		got++;
	close(sv[0]);
	close(sv[1]);
	return got;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 50, msgs = argc > 2 ? atoi(argv[2]) : 10;
	int accepted = 0, dropped_passed = 0, bad_rounds = 0;
	for (int i = 0; i < rounds; i++) {
		int a = round_trip(0xffffffff, msgs);
		usleep(20000);
		int d = round_trip(0, msgs);
		usleep(20000);
		if (a < 0 || d < 0)
			return 1;
		accepted += a;
		dropped_passed += d;
		if (a != msgs || d != 0) {
			if (!bad_rounds)
				printf("round %d: accept-all passed %d/%d, drop-all passed %d/%d\n", i, a, msgs, d, msgs);
			bad_rounds++;
		}
	}
	printf("bpf_filter: %d rounds: accept-all passed %d/%d, drop-all passed %d/%d; %d wrong rounds\n",
	       rounds, accepted, rounds * msgs, dropped_passed, rounds * msgs, bad_rounds);
	return bad_rounds ? 1 : 0;
}
