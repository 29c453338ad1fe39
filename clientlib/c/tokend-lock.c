/*
 * tokend-lock - run a command while holding a tokend token, like flock(1).
 *
 *   tokend-lock [-s host:port]... [-m mode] [-w ms | -n] [-g ms] [-f] [-q]
 *               [--key-file FILE | --insecure] NAME command [args...]
 *
 * Acquires token NAME (default mode EX, waiting as long as it takes), checks
 * that the grant is valid, runs the command with TOKEND_TOKEN, TOKEND_FENCE
 * and TOKEND_VALID_UNTIL_MS in its environment, releases the token when the
 * command ends and exits with the command's status (128 + signal if it was
 * killed).
 *
 * The session is authenticated with the client key of --key-file FILE, else
 * of $TOKEND_KEY_FILE, else of tokend-data/pki/client.key if it exists
 * (tokend_options in tokend.h); --insecure is for a cluster started with
 * --insecure.
 *
 * The command runs only while the grant is valid. tokend-lock watches it
 * (the library renews it in the background) and, the moment its validity
 * runs out without renewal (the grant is "in jeopardy": its worker crashed or
 * cannot be reached), sends SIGTERM to the command's process group, then
 * SIGKILL after the kill grace (-g, default 1000 ms), and exits 4. If the
 * library declares the grant lost before that, SIGKILL goes at once.
 *
 * Why at jeopardy and not at loss: another client can be granted the token
 * only after the old owner's vouching has ended and the new owner's grace
 * period has passed. Jeopardy begins no later than the end of that vouching,
 * so the command has the whole grace period (5 s by default) to stop; the
 * library declares loss only a margin (~1% of the lease + 10 ms) before
 * another client could be granted, too late for a SIGTERM to be honoured in
 * time. A grant in jeopardy is often reclaimed from the new owner a little
 * later; the command has been stopped anyway: safety over progress.
 *
 * What this cannot protect: a process that keeps running after SIGKILL (in
 * uninterruptible I/O: its writes already issued may land later), a write
 * that is already in flight in the network or in a storage system's queue,
 * and processes the command moved out of its process group (or, with -f,
 * any process it started). Storage that checks TOKEND_FENCE (refusing
 * fences below the highest it has seen) is protected against all of these;
 * storage that does not check it is not.
 *
 * Exit status: the command's (128 + signal if it died of one); 1 error
 * (service unreachable, out of memory), 2 usage, 3 not acquired (held
 * elsewhere with -n, or -w ran out), 4 the grant was lost or its validity
 * ran out (the command was stopped, or not started), 126 the command could
 * not be started, 127 it was not found. Every status tokend-lock chooses
 * itself (not the command's) comes with a message on stderr.
 */
#define _POSIX_C_SOURCE 200809L
#include "tokend.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define EXIT_ERROR 1
#define EXIT_USAGE 2
#define EXIT_NOT_ACQUIRED 3
#define EXIT_LOST 4

/* The shortest validity left with which the command is started; below it
 * tokend-lock waits for the library's next renewal. */
#define MIN_START_MS 50
/* How often the grant is checked while the command runs, at most. */
#define POLL_MS 10

static int quiet;
static const char *token_name;

/* target: whom to signal: -pgid (the command's own process group) or, with
 * -f, the command's pid; 0 before the command exists. Read by signal
 * handlers, hence sig_atomic_t. */
static volatile sig_atomic_t target;
static volatile sig_atomic_t pending_sig; /* a signal that came before the command existed */

/* The loss report from the library's thread. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* guards the fields below */
static int lost_why;      /* TOKEND_ELOST or TOKEND_ESESSION once on_lost ran; 0 before */
static pid_t lost_target; /* target as the library's thread sees it (same value as target) */

static void usage(void)
{
	fprintf(stderr,
		"usage: tokend-lock [-s host:port]... [-m mode] [-w ms | -n] [-g ms] [-f] [-q]\n"
		"                   [--key-file FILE | --insecure] NAME command [args...]\n"
		"  -s host:port  tokend worker to start from (repeatable; default $TOKEND_SERVER or 127.0.0.1:7700)\n"
		"  --key-file FILE  the client key (\"tokend-key v1 NAME KEY\"; default $TOKEND_KEY_FILE, else\n"
		"                tokend-data/pki/client.key if it exists)\n"
		"  --insecure    no client key: only for a cluster started with --insecure\n"
		"  -m mode       NL CR CW PR PW EX, shared or exclusive (default EX)\n"
		"  -w ms         wait at most ms for the token (default: no limit)\n"
		"  -n            do not wait: fail at once (exit 3) if the token is held\n"
		"  -g ms         when the grant's validity runs out: SIGTERM, then SIGKILL after ms (default 1000)\n"
		"  -f            keep the command in our process group (interactive commands that read the\n"
		"                terminal); then only the command itself is signalled, not what it started\n"
		"  -k            accepted for compatibility: stopping the command is the default\n"
		"  -q            no messages when the token is not acquired\n"
		"The command gets TOKEND_TOKEN, TOKEND_FENCE (the grant's fence: give it to storage) and\n"
		"TOKEND_VALID_UNTIL_MS (Unix time in ms until which the grant was valid when the command started;\n"
		"renewed in the background). When the validity runs out (worker lost), the command is stopped\n"
		"and tokend-lock exits 4. Exit: the command's status, 1 error, 2 usage, 3 not acquired, 4 lost.\n");
	exit(EXIT_USAGE);
}

static void forward(int sig)
{
	pid_t t = (pid_t)target;
	if (t != 0)
		kill(t, sig);
	else
		pending_sig = sig;
}

/* Called from the library's thread: keep it short. kill(2) is all it does
 * to the command, so a loss that races with the command's start is caught
 * either here (target set) or by the main thread's check after the start. */
static void on_lost(tokend_client *c, const tokend_grant *g, tokend_status why, void *arg)
{
	(void)c;
	(void)g;
	(void)arg;
	pthread_mutex_lock(&mu);
	lost_why = why;
	pid_t t = lost_target;
	pthread_mutex_unlock(&mu);
	if (t != 0)
		kill(t, SIGKILL);
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

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

static int is_env(const char *e, const char *name)
{
	size_t n = strlen(name);
	return strncmp(e, name, n) == 0 && e[n] == '=';
}

/* finish releases the grant, closes the client and returns code. A grant
 * that is lost or in jeopardy is not released: its worker may be dead, and
 * a release would wait until lease + grace; closing the session (bounded)
 * ends it as well. */
static int finish(tokend_client *c, tokend_grant *g, int code)
{
	if (code == EXIT_LOST) {
		tokend_close(c);
		return code;
	}
	int rc = tokend_release(c, g, NULL, 0);
	if (rc != TOKEND_OK && rc != TOKEND_ELOST && rc != TOKEND_ENOTHELD && rc != TOKEND_ESESSION)
		fprintf(stderr, "tokend-lock: release %s: %s\n", token_name, tokend_strerror(rc));
	tokend_close(c);
	return code;
}

/*
 * Take the long options (--key-file FILE, --key-file=FILE, --insecure) out
 * of argv[1..], up to NAME (the first argument that is no option), so that
 * getopt sees only the short ones. Returns the new argc, or -1 on a bad one.
 */
static int long_options(int argc, char **argv, const char **key_file, int *insecure)
{
	int out = 1, i = 1;
	while (i < argc) {
		char *a = argv[i];
		if (a[0] != '-' || !strcmp(a, "-") || !strcmp(a, "--"))
			break;
		if (!strcmp(a, "--insecure")) {
			*insecure = 1;
			i++;
		} else if (!strcmp(a, "--key-file")) {
			if (i + 1 >= argc)
				return -1;
			*key_file = argv[i + 1];
			i += 2;
		} else if (!strncmp(a, "--key-file=", 11)) {
			*key_file = a + 11;
			i++;
		} else if (a[1] == '-') {
			fprintf(stderr, "tokend-lock: unknown option %s\n", a);
			return -1;
		} else {
			/* a short option, with its value if it takes one separately */
			int takes = strchr("smwg", a[1]) != NULL && a[2] == 0;
			argv[out++] = argv[i++];
			if (takes && i < argc)
				argv[out++] = argv[i++];
		}
	}
	while (i < argc)
		argv[out++] = argv[i++];
	argv[out] = NULL;
	return out;
}

int main(int argc, char **argv)
{
	const char *key_file = NULL;
	int insecure = 0;
	argc = long_options(argc, argv, &key_file, &insecure);
	if (argc < 0)
		usage();
	if (key_file && insecure) {
		fprintf(stderr, "tokend-lock: --key-file and --insecure exclude each other\n");
		usage();
	}
	const char *seeds[64];
	size_t nseeds = 0;
	tokend_mode mode = TOKEND_EX;
	int64_t wait_ms = TOKEND_WAIT_FOREVER;
	int64_t kill_grace_ms = 1000;
	int foreground = 0;
	int opt;
	while ((opt = getopt(argc, argv, "+s:m:w:g:nfkqh")) != -1) {
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
		case 'g':
			if (parse_ms(optarg, &kill_grace_ms) != 0) {
				fprintf(stderr, "tokend-lock: bad kill grace %s\n", optarg);
				usage();
			}
			break;
		case 'n': wait_ms = TOKEND_TRY; break;
		case 'f': foreground = 1; break;
		case 'k': break; /* the default now */
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
		return EXIT_USAGE;
	}
	if (nseeds == 0) {
		const char *env = getenv("TOKEND_SERVER");
		seeds[nseeds++] = env && *env ? env : "127.0.0.1:7700";
	}

	/* SIGCHLD stays blocked in every thread (the library's thread inherits
	 * this mask) so that the main thread can wait for it with a timeout. */
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, &chld, NULL);

	const char *env_key = getenv("TOKEND_KEY_FILE");
	if (!insecure && !key_file && !(env_key && *env_key) && access("tokend-data/pki/client.key", F_OK) != 0) {
		fprintf(stderr, "tokend-lock: no client key: give --key-file FILE (or set $TOKEND_KEY_FILE); "
				"`tokend certs` writes <certs-dir>/client.key. --insecure only for a cluster started "
				"with --insecure\n");
		return EXIT_ERROR;
	}

	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = nseeds;
	o.on_lost = on_lost;
	o.key_file = key_file;
	o.insecure = insecure;
	char connect_err[256];
	o.errbuf = connect_err;
	o.errbuf_len = sizeof connect_err;
	tokend_client *c;
	int rc = tokend_connect(&o, &c);
	if (rc != TOKEND_OK) {
		fprintf(stderr, "tokend-lock: connect to %s%s: %s\n", seeds[0], nseeds > 1 ? " (and the other -s)" : "",
			connect_err[0] ? connect_err : tokend_strerror(rc));
		return EXIT_ERROR;
	}
	tokend_grant g;
	rc = tokend_acquire(c, token_name, name_len, mode, wait_ms, &g);
	if (rc != TOKEND_OK) {
		/* A try that times out got no answer at all (an error); a wait
		 * that times out may have been queued all along (not acquired). */
		int code = rc == TOKEND_ECONFLICT || (rc == TOKEND_ETIMEDOUT && wait_ms != TOKEND_TRY)
				   ? EXIT_NOT_ACQUIRED
				   : EXIT_ERROR;
		if (!quiet || code != EXIT_NOT_ACQUIRED)
			fprintf(stderr, "tokend-lock: %s not acquired: %s%s\n", token_name, tokend_strerror(rc),
				rc == TOKEND_ETIMEDOUT && wait_ms == TOKEND_TRY
					? " (no answer from the worker that owns its shard)"
					: "");
		tokend_close(c);
		return code;
	}

	/* From here the terminal's SIGINT/SIGQUIT and a SIGTERM/SIGHUP sent to
	 * us go to the command (with -f, SIGINT/SIGQUIT reach it directly: we
	 * ignore them); we release when it ends. */
	struct sigaction ign, fwd, old_int, old_quit;
	memset(&ign, 0, sizeof ign);
	ign.sa_handler = SIG_IGN;
	sigemptyset(&ign.sa_mask);
	memset(&fwd, 0, sizeof fwd);
	fwd.sa_handler = forward;
	sigemptyset(&fwd.sa_mask);
	sigaction(SIGINT, foreground ? &ign : &fwd, &old_int);
	sigaction(SIGQUIT, foreground ? &ign : &fwd, &old_quit);
	sigaction(SIGTERM, &fwd, NULL);
	sigaction(SIGHUP, &fwd, NULL);

	/* Start only with a grant that is valid now, with some time left; a
	 * grant in jeopardy is waited on until it is reclaimed or lost (at most
	 * the grace period). */
	uint32_t left = 0;
	for (;;) {
		rc = tokend_grant_check(c, &g, &left);
		if (rc == TOKEND_OK && left >= MIN_START_MS)
			break;
		if (rc != TOKEND_OK && rc != TOKEND_EJEOPARDY) {
			fprintf(stderr, "tokend-lock: %s lost before the command started (%s); not started\n", token_name,
				tokend_strerror(rc));
			return finish(c, &g, EXIT_LOST);
		}
		if (pending_sig) {
			fprintf(stderr, "tokend-lock: %s: signal %d before the command started; not started\n", token_name,
				(int)pending_sig);
			return finish(c, &g, 128 + (int)pending_sig);
		}
		sleep_ms(POLL_MS);
	}

	/* The command's environment: ours plus TOKEND_TOKEN, TOKEND_FENCE and
	 * TOKEND_VALID_UNTIL_MS (built here, not with setenv: the library's
	 * thread is running). */
	size_t n = 0;
	while (environ[n])
		n++;
	char **envp = calloc(n + 4, sizeof *envp);
	char fence[64], until[64];
	char *tok = malloc(sizeof "TOKEND_TOKEN=" + name_len);
	if (!envp || !tok) {
		fprintf(stderr, "tokend-lock: out of memory\n");
		return finish(c, &g, EXIT_ERROR);
	}
	snprintf(fence, sizeof fence, "TOKEND_FENCE=%" PRIu64, g.fence);
	snprintf(until, sizeof until, "TOKEND_VALID_UNTIL_MS=%" PRId64, wall_ms() + (int64_t)left);
	sprintf(tok, "TOKEND_TOKEN=%s", token_name);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (!is_env(environ[i], "TOKEND_FENCE") && !is_env(environ[i], "TOKEND_TOKEN") &&
		    !is_env(environ[i], "TOKEND_VALID_UNTIL_MS"))
			envp[k++] = environ[i];
	envp[k++] = fence;
	envp[k++] = until;
	envp[k++] = tok;
	envp[k] = NULL;

	/* The command starts with default signal dispositions, an empty signal
	 * mask and (unless -f) a process group of its own, so that stopping it
	 * also stops what it started. */
	posix_spawnattr_t attr;
	sigset_t def, none;
	sigemptyset(&def);
	sigaddset(&def, SIGINT);
	sigaddset(&def, SIGQUIT);
	sigaddset(&def, SIGTERM);
	sigaddset(&def, SIGHUP);
	sigaddset(&def, SIGCHLD);
	sigemptyset(&none);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setsigdefault(&attr, &def);
	posix_spawnattr_setsigmask(&attr, &none);
	short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
	if (!foreground) {
		flags |= POSIX_SPAWN_SETPGROUP;
		posix_spawnattr_setpgroup(&attr, 0);
	}
	posix_spawnattr_setflags(&attr, flags);
	pid_t pid;
	int err = posix_spawnp(&pid, cmd[0], NULL, &attr, cmd, envp);
	posix_spawnattr_destroy(&attr);
	free(envp);
	free(tok);
	if (err != 0) {
		fprintf(stderr, "tokend-lock: %s: %s\n", cmd[0], strerror(err));
		return finish(c, &g, err == ENOENT ? 127 : 126);
	}
	pid_t tgt = foreground ? pid : -pid;
	target = tgt;
	pthread_mutex_lock(&mu);
	lost_target = tgt;
	int why = lost_why;
	pthread_mutex_unlock(&mu);
	if (pending_sig)
		kill(tgt, pending_sig);

	/* Watch the command and the grant. */
	int status = 0, stopping = 0, killed = 0, reaped = 0;
	int64_t term_at = 0;
	const char *reason = NULL;
	char reason_buf[128];
	struct timespec poll = {0, POLL_MS * 1000000L};
	for (;;) {
		/* Seen exited but not reaped yet (WNOWAIT): its pid cannot be
		 * reused until the signal senders below have forgotten it. */
		siginfo_t info;
		info.si_pid = 0;
		int r = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT);
		if ((r == 0 && info.si_pid == pid) || (r < 0 && errno != EINTR))
			break;
		if (!why) {
			pthread_mutex_lock(&mu);
			why = lost_why;
			pthread_mutex_unlock(&mu);
		}
		rc = tokend_grant_check(c, &g, NULL);
		if (!why && rc != TOKEND_OK && rc != TOKEND_EJEOPARDY)
			why = rc;
		if (why && !killed) {
			kill(tgt, SIGKILL);
			killed = stopping = 1;
			snprintf(reason_buf, sizeof reason_buf, "lost (%s): the command was killed (SIGKILL)",
				 tokend_strerror(why));
			reason = reason_buf;
		} else if (rc == TOKEND_EJEOPARDY && !stopping) {
			stopping = 1;
			term_at = mono_ms();
			if (kill_grace_ms == 0) {
				kill(tgt, SIGKILL);
				killed = 1;
				reason = "validity ran out (not renewed: the worker failed or cannot be reached): the "
					 "command was killed (SIGKILL)";
			} else {
				kill(tgt, SIGTERM);
				reason = "validity ran out (not renewed: the worker failed or cannot be reached): the "
					 "command was stopped (SIGTERM)";
			}
		} else if (stopping && !killed && mono_ms() - term_at >= kill_grace_ms) {
			kill(tgt, SIGKILL);
			killed = 1;
			reason = "validity ran out (not renewed: the worker failed or cannot be reached): the command "
				 "was killed (SIGTERM, then SIGKILL after the kill grace)";
		}
		/* SIGCHLD wakes us at once; otherwise check the grant again. */
		while (sigtimedwait(&chld, NULL, &poll) < 0 && errno == EINTR) {
		}
	}
	if (stopping && !foreground)
		kill(tgt, SIGKILL); /* whatever is left of its process group */
	target = 0;
	pthread_mutex_lock(&mu);
	lost_target = 0;
	if (!why)
		why = lost_why;
	pthread_mutex_unlock(&mu);
	while ((reaped = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
	}
	reaped = reaped == pid;
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGQUIT, &old_quit, NULL);

	int exit_code;
	if (stopping || why) {
		if (!reason) {
			snprintf(reason_buf, sizeof reason_buf, "lost (%s) as the command ended: it was killed (SIGKILL)",
				 tokend_strerror(why));
			reason = reason_buf;
		}
		fprintf(stderr, "tokend-lock: %s (fence %" PRIu64 ") %s; exit %d\n", token_name, g.fence, reason,
			EXIT_LOST);
		exit_code = EXIT_LOST;
	} else if (!reaped)
		exit_code = EXIT_ERROR;
	else if (WIFEXITED(status))
		exit_code = WEXITSTATUS(status);
	else if (WIFSIGNALED(status))
		exit_code = 128 + WTERMSIG(status);
	else
		exit_code = EXIT_ERROR;
	if (!reaped)
		fprintf(stderr, "tokend-lock: waiting for the command: %s\n", strerror(errno));
	return finish(c, &g, exit_code);
}
