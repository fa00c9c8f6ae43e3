// Runs a command as uid/gid 1000 with no supplementary groups:
// asuser PROG [ARGS...] (the VM tests' unprivileged user, e.g.
// t-client_sysfs.sh). Exits 126 if it cannot drop privileges or exec PROG.
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	uid_t ru, eu, su;

	if (argc < 2) {
		fprintf(stderr, "usage: asuser PROG [ARGS...]\n");
		return 126;
	}
	if (setgroups(0, NULL) || setresgid(1000, 1000, 1000) || setresuid(1000, 1000, 1000)) {
		perror("asuser: dropping to uid 1000");
		return 126;
	}
	if (getresuid(&ru, &eu, &su) || ru != 1000 || eu != 1000 || su != 1000) {
		fprintf(stderr, "asuser: still uid %d/%d/%d\n", (int)ru, (int)eu, (int)su);
		return 126;
	}
	execvp(argv[1], argv + 1);
	perror(argv[1]);
	return 126;
}
