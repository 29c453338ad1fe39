/*
 * tokend-lock - run a command while holding a tokend token, like flock(1).
 *
 *   tokend-lock [-s host:port]... [-m mode] [-w ms | -n] [-k] [-q] NAME command [args...]
 *
 * Acquires token NAME (default mode EX, waiting as long as it takes), runs
 * the command with TOKEND_FENCE (the grant's fence, decimal) and TOKEND_TOKEN
 * in its environment, releases the token when the command ends and exits
 * with the command's status (128 + signal if it was killed).
 *
 * Exit status when the command does not run: 1 the token was not acquired
 * (held elsewhere with -n, -w timed out, service unreachable), 2 usage,
 * 126 the command could not be started, 127 it was not found.
 */
#define _POSIX_C_SOURCE 200809L
#include "tokend.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static volatile sig_atomic_t child_pid;
static int kill_on_lost;
static int quiet;
static const char *token_name;

static void usage(void)
{
	fprintf(stderr,
		"usage: tokend-lock [-s host:port]... [-m mode] [-w ms | -n] [-k] [-q] NAME command [args...]\n"
		"  -s host:port  tokend worker to start from (repeatable; default $TOKEND_SERVER or 127.0.0.1:7700)\n"
		"  -m mode       NL CR CW PR PW EX, shared or exclusive (default EX)\n"
		"  -w ms         wait at most ms for the token (default: no limit)\n"
		"  -n            do not wait: fail at once if the token is held\n"
		"  -k            kill the command (SIGTERM) if the token is lost\n"
		"  -q            no messages on failure to acquire\n"
		"The command gets TOKEND_FENCE (the grant's fence) and TOKEND_TOKEN.\n");
	exit(2);
}

static void forward(int sig)
{
	if (child_pid > 0)
		kill((pid_t)child_pid, sig);
}

/* Called from the library's thread: keep it short. */
static void on_lost(tokend_client *c, const tokend_grant *g, tokend_status why, void *arg)
{
	(void)c;
	(void)g;
	(void)arg;
	if (!quiet)
		fprintf(stderr, "tokend-lock: token %s lost: %s\n", token_name, tokend_strerror(why));
	if (kill_on_lost && child_pid > 0)
		kill((pid_t)child_pid, SIGTERM);
}

static int parse_ms(const char *s, int64_t *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || *end || end == s || v < 0)
		return -1;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	const char *seeds[64];
	size_t nseeds = 0;
	tokend_mode mode = TOKEND_EX;
	int64_t wait_ms = TOKEND_WAIT_FOREVER;
	int opt;
	while ((opt = getopt(argc, argv, "+s:m:w:nkqh")) != -1) {
		switch (opt) {
		case 's':
			if (nseeds == sizeof seeds / sizeof seeds[0])
				usage();
			seeds[nseeds++] = optarg;
			break;
		case 'm':
			if (tokend_mode_parse(optarg, &mode) != TOKEND_OK) {
				fprintf(stderr, "tokend-lock: bad mode %s\n", optarg);
				usage();
			}
			break;
		case 'w':
			if (parse_ms(optarg, &wait_ms) != 0) {
				fprintf(stderr, "tokend-lock: bad wait %s\n", optarg);
				usage();
			}
			if (wait_ms == 0)
				wait_ms = TOKEND_TRY;
			break;
		case 'n': wait_ms = TOKEND_TRY; break;
		case 'k': kill_on_lost = 1; break;
		case 'q': quiet = 1; break;
		default: usage();
		}
	}
	if (argc - optind < 2)
		usage();
	token_name = argv[optind];
	char **cmd = &argv[optind + 1];
	size_t name_len = strlen(token_name);
	if (name_len == 0 || name_len > TOKEND_MAX_NAME) {
		fprintf(stderr, "tokend-lock: token names are 1..%d bytes\n", TOKEND_MAX_NAME);
		return 2;
	}
	if (nseeds == 0) {
		const char *env = getenv("TOKEND_SERVER");
		seeds[nseeds++] = env && *env ? env : "127.0.0.1:7700";
	}

	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = nseeds;
	o.on_lost = on_lost;
	tokend_client *c;
	int rc = tokend_connect(&o, &c);
	if (rc != TOKEND_OK) {
		if (!quiet)
			fprintf(stderr, "tokend-lock: connect to %s: %s\n", seeds[0], tokend_strerror(rc));
		return 1;
	}
	tokend_grant g;
	rc = tokend_acquire(c, token_name, name_len, mode, wait_ms, &g);
	if (rc != TOKEND_OK) {
		if (!quiet)
			fprintf(stderr, "tokend-lock: %s: %s\n", token_name, tokend_strerror(rc));
		tokend_close(c);
		return 1;
	}

	/* The command's environment: ours plus TOKEND_FENCE and TOKEND_TOKEN
	 * (built here, not with setenv: the library's thread is running). */
	size_t n = 0;
	while (environ[n])
		n++;
	char **envp = calloc(n + 3, sizeof *envp);
	char fence[64];
	char *tok = malloc(sizeof "TOKEND_TOKEN=" + name_len);
	if (!envp || !tok) {
		fprintf(stderr, "tokend-lock: out of memory\n");
		tokend_release(c, &g, NULL, 0);
		tokend_close(c);
		return 1;
	}
	snprintf(fence, sizeof fence, "TOKEND_FENCE=%" PRIu64, g.fence);
	sprintf(tok, "TOKEND_TOKEN=%s", token_name);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "TOKEND_FENCE=", 13) != 0 && strncmp(environ[i], "TOKEND_TOKEN=", 13) != 0)
			envp[k++] = environ[i];
	envp[k++] = fence;
	envp[k++] = tok;
	envp[k] = NULL;

	/* Like system(3): the terminal's SIGINT/SIGQUIT go to the command (same
	 * process group), we ignore them and release when it ends; SIGTERM and
	 * SIGHUP sent to us are passed on to it. The child starts with default
	 * dispositions. */
	struct sigaction ign, fwd, old_int, old_quit;
	memset(&ign, 0, sizeof ign);
	ign.sa_handler = SIG_IGN;
	sigemptyset(&ign.sa_mask);
	memset(&fwd, 0, sizeof fwd);
	fwd.sa_handler = forward;
	sigemptyset(&fwd.sa_mask);
	sigaction(SIGINT, &ign, &old_int);
	sigaction(SIGQUIT, &ign, &old_quit);
	sigaction(SIGTERM, &fwd, NULL);
	sigaction(SIGHUP, &fwd, NULL);

	posix_spawnattr_t attr;
	sigset_t def;
	sigemptyset(&def);
	sigaddset(&def, SIGINT);
	sigaddset(&def, SIGQUIT);
	sigaddset(&def, SIGTERM);
	sigaddset(&def, SIGHUP);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setsigdefault(&attr, &def);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
	pid_t pid;
	int status = 0, exit_code;
	int err = posix_spawnp(&pid, cmd[0], NULL, &attr, cmd, envp);
	posix_spawnattr_destroy(&attr);
	if (err != 0) {
		fprintf(stderr, "tokend-lock: %s: %s\n", cmd[0], strerror(err));
		exit_code = err == ENOENT ? 127 : 126;
	} else {
		child_pid = pid;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
		}
		child_pid = 0;
		if (WIFEXITED(status))
			exit_code = WEXITSTATUS(status);
		else if (WIFSIGNALED(status))
			exit_code = 128 + WTERMSIG(status);
		else
			exit_code = 1;
	}
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGQUIT, &old_quit, NULL);

	rc = tokend_release(c, &g, NULL, 0);
	if (rc != TOKEND_OK && rc != TOKEND_ELOST && !quiet)
		fprintf(stderr, "tokend-lock: release %s: %s\n", token_name, tokend_strerror(rc));
	tokend_close(c);
	free(envp);
	free(tok);
	return exit_code;
}
