/*
 * async.c - handles without a background thread (tokend.h, "EVENT LOOPS"):
 * tokend_fd, tokend_timeout and tokend_process drive the engine from the
 * application's event loop, and asynchronous acquire, release and convert
 * complete through callbacks.
 *
 * An asynchronous operation is the same sync request a blocking call would
 * wait for (client.c: acquire_req, release_req, convert_req), looked at by
 * req_step and confirm_step, the steps of the blocking calls' wait loops,
 * each time tokend_process runs instead of by a waiting thread. The
 * blocking calls on such a handle wait in evl_drive, which runs the same
 * work as tokend_process, so everything shares one engine path. Every
 * function here expects c->mu held, except the public ones.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>

enum { AOP_ACQUIRE, AOP_RELEASE, AOP_CONVERT };
enum { PH_REQ, PH_CONFIRM, PH_DONE };

struct aop {
	struct aop *next;
	uint64_t id;
	int kind;
	int phase;
	struct req *r;   /* PH_REQ: the request (NULL: sent by the engine from a callback, nothing to wait for) */
	int down;        /* AOP_CONVERT: a downgrade (cannot be canceled) */
	int cancel;      /* tokend_cancel_async asked */
	int64_t t0, deadline, next_vouch;
	int64_t until;   /* when to look at it again */
	int result;      /* PH_DONE */
	tokend_grant g;  /* ACQUIRE: the grant; RELEASE: the caller's; CONVERT: before, then after */
	tokend_grant old; /* CONVERT: what on_lost reports if the upgrade is given up */
	char op[160];    /* for messages */
	tokend_done_fn cb;
	void *arg;
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static void aop_finish(struct tokend_client *c, struct aop *op, int rc)
{
	op->phase = PH_DONE;
	op->result = rc;
	op->r = NULL;
	c->naops--;
}

/* A pending grant an operation got is given back (cancel, close). */
static void aop_give_back(struct tokend_client *c, struct aop *op)
{
	struct grant_rec *g = grant_find(c, op->g.name, op->g.name_len, op->g.fence);
	if (g && g->pending)
		grant_give_up(c, g, op->kind == AOP_CONVERT ? &op->old : NULL, TOKEND_ELOST);
}

/* Withdraw the request of an operation in PH_REQ (CANCEL if it was sent). */
static void aop_abandon(struct tokend_client *c, struct aop *op)
{
	if (op->r && !req_abandon(c, op->r))
		req_free(op->r);
	op->r = NULL;
}

/* Look at op once: finish it if its outcome is known, else note when to
 * look again (op->until). Never calls its callback. */
static void aop_step(struct tokend_client *c, struct aop *op)
{
	int rc, handed;
	int64_t until;
	if (op->phase == PH_REQ) {
		struct req *r = op->r;
		if (!r) {
			aop_finish(c, op, TOKEND_OK);
			return;
		}
		if (op->cancel && !r->done) {
			aop_abandon(c, op);
			set_err(c, "%s: canceled", op->op);
			aop_finish(c, op, TOKEND_ECANCELED);
			return;
		}
		if (!req_step(c, r, op->deadline, 0, &handed, &rc, &until)) {
			op->until = until;
			return;
		}
		if (rc != TOKEND_OK)
			req_failed(c, op->op, r, rc, op->t0);
		tokend_grant res = r->out;
		if (!handed)
			req_free(r);
		op->r = NULL;
		if (rc != TOKEND_OK || op->kind == AOP_RELEASE) {
			aop_finish(c, op, rc);
			return;
		}
		struct grant_rec *g = grant_find(c, res.name, res.name_len, res.fence);
		op->g = res;
		if (op->kind == AOP_CONVERT && !(g && g->pending)) {
			aop_finish(c, op, TOKEND_OK); /* a downgrade, or kept its fence */
			return;
		}
		op->phase = PH_CONFIRM;
		op->next_vouch = 0;
	}
	if (op->phase == PH_CONFIRM) {
		if (op->cancel) {
			aop_give_back(c, op);
			set_err(c, "%s: canceled (the grant that came was given back)", op->op);
			if (op->kind == AOP_CONVERT)
				op->g = op->old;
			aop_finish(c, op, TOKEND_ECANCELED);
			return;
		}
		tokend_grant out;
		if (!confirm_step(c, op->g.name, op->g.name_len, op->g.fence, op->deadline,
				  op->kind == AOP_CONVERT ? &op->old : NULL, &out, op->op, &op->next_vouch, &rc, &until)) {
			op->until = until;
			return;
		}
		if (rc == TOKEND_OK)
			op->g = out;
		else if (op->kind == AOP_CONVERT)
			op->g = op->old;
		aop_finish(c, op, rc);
	}
}

/* Step every operation not finished; returns when one needs looking at next. */
static int64_t aops_run(struct tokend_client *c, int64_t now)
{
	int64_t next = NEVER;
	for (struct aop *op = c->aops; op; op = op->next) {
		if (op->phase != PH_DONE)
			aop_step(c, op);
		next = min64(next, op->phase == PH_DONE ? now : op->until);
	}
	return next;
}

/* Call the callbacks of finished operations, oldest first, without the
 * lock, on this thread (which counts as the callback thread meanwhile). */
static void aops_complete(struct tokend_client *c)
{
	int was = c->in_cb;
	pthread_t t = c->cb_thread;
	for (;;) {
		struct aop **pp = &c->aops;
		while (*pp && (*pp)->phase != PH_DONE)
			pp = &(*pp)->next;
		struct aop *op = *pp;
		if (!op)
			break;
		*pp = op->next;
		c->in_cb = 1;
		c->cb_thread = pthread_self();
		pthread_mutex_unlock(&c->mu);
		const tokend_grant *g = op->kind == AOP_ACQUIRE && op->result != TOKEND_OK ? NULL : &op->g;
		op->cb(c, op->result, g, op->arg);
		pthread_mutex_lock(&c->mu);
		c->in_cb = was;
		c->cb_thread = t;
		free(op);
	}
}

/* When tokend_process must run next (monotonic ns). */
static int64_t evl_next(struct tokend_client *c, int64_t now)
{
	int64_t w = engine_next(c, now);
	for (struct aop *op = c->aops; op; op = op->next)
		w = min64(w, op->phase == PH_DONE ? now : op->until);
	return w;
}

/* tokend_process's work: datagrams, timers, operations, callbacks. The
 * completions go first: a grant's on_revoke never comes before its
 * acquire's callback. */
static void evl_run(struct tokend_client *c)
{
	int64_t now = tkn_now();
	engine_receive(c, now);
	now = tkn_now();
	(void)engine_timers(c, now);
	(void)aops_run(c, now);
	aops_complete(c);
	engine_dispatch(c);
}

void evl_drive(struct tokend_client *c, int64_t until)
{
	int64_t now = tkn_now();
	int64_t w = min64(evl_next(c, now), until);
	if (w > now) {
		int64_t d = min64(w - now, 1000 * NS_PER_MS);
		struct pollfd p = {c->fd, POLLIN, 0};
		pthread_mutex_unlock(&c->mu);
		(void)poll(&p, 1, (int)((d + NS_PER_MS - 1) / NS_PER_MS));
		pthread_mutex_lock(&c->mu);
	}
	evl_run(c);
}

void aops_close(struct tokend_client *c)
{
	for (struct aop *op = c->aops; op; op = op->next) {
		if (op->phase == PH_DONE)
			continue;
		if (op->phase == PH_REQ)
			aop_abandon(c, op);
		else
			aop_give_back(c, op);
		if (op->kind == AOP_CONVERT)
			op->g = op->old;
		aop_finish(c, op, TOKEND_ECLOSED);
	}
	aops_complete(c);
}

/* ------------------------------------------------------------ the API */

int tokend_fd(tokend_client *c)
{
	if (!c)
		return TOKEND_EINVAL;
	return c->evloop ? c->fd : TOKEND_ENOTSUP;
}

int64_t tokend_timeout(tokend_client *c)
{
	if (!c || !c->evloop)
		return -1;
	pthread_mutex_lock(&c->mu);
	int64_t ms = -1;
	if (!c->closing) {
		int64_t now = tkn_now(), d = evl_next(c, now) - now;
		ms = d <= 0 ? 0 : (d + NS_PER_MS - 1) / NS_PER_MS; /* rounded up: at 0 something is due */
	}
	pthread_mutex_unlock(&c->mu);
	return ms;
}

int tokend_process(tokend_client *c)
{
	if (!c)
		return TOKEND_EINVAL;
	if (!c->evloop)
		return TOKEND_ENOTSUP;
	if (on_bg_thread(c))
		return TOKEND_ECALLBACK;
	pthread_mutex_lock(&c->mu);
	int rc = api_enter(c);
	if (rc == TOKEND_OK) {
		evl_run(c);
		api_leave(c);
	}
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/*
 * Checks common to the start calls, with c->mu held and the call entered:
 * room for one more operation, and a new one (or a status).
 */
static int aop_new(struct tokend_client *c, int kind, tokend_done_fn cb, void *arg, struct aop **out)
{
	/* Withdrawn requests keep their ids until their CANCEL is answered:
	 * they count too, so that keepalives always find an id. The library's
	 * own keepalives and CANCELs do not: the reserve between
	 * TOKEND_MAX_ASYNC and the session's 256 ids is theirs, and whether
	 * one happens to be in flight must not decide a caller's start. */
	size_t live = 0;
	for (struct req *r = c->reqs; r; r = r->next)
		live += r->in_session && !r->done && r->type != TKW_KEEPALIVE && r->type != TKW_CANCEL;
	if (c->naops >= TOKEND_MAX_ASYNC || live >= TOKEND_MAX_ASYNC) {
		set_err(c, "%zu asynchronous operations and %zu requests in flight: the most a handle takes is %d "
			   "(TOKEND_MAX_ASYNC)", c->naops, live, TOKEND_MAX_ASYNC);
		return TOKEND_ELIMIT;
	}
	struct aop *op = calloc(1, sizeof *op);
	if (!op)
		return TOKEND_ENOMEM;
	op->kind = kind;
	op->phase = PH_REQ;
	op->cb = cb;
	op->arg = arg;
	op->t0 = tkn_now();
	op->deadline = NEVER;
	*out = op;
	return TOKEND_OK;
}

/* Link a started operation (after the others), give it an id, send it. */
static void aop_link(struct tokend_client *c, struct aop *op, uint64_t *id)
{
	struct aop **pp = &c->aops;
	while (*pp)
		pp = &(*pp)->next;
	*pp = op;
	op->id = ++c->next_aop;
	c->naops++;
	if (id)
		*id = op->id;
	aop_step(c, op);
}

/* The start of every asynchronous call, once its arguments are checked:
 * c->mu taken, the call entered (api_enter) and an operation of kind made.
 * On failure nothing is held. */
static int aop_start(tokend_client *c, int kind, tokend_done_fn cb, void *arg, struct aop **op)
{
	if (!c->evloop)
		return TOKEND_ENOTSUP;
	pthread_mutex_lock(&c->mu);
	int rc = api_enter(c);
	if (rc != TOKEND_OK) {
		pthread_mutex_unlock(&c->mu);
		return rc;
	}
	rc = aop_new(c, kind, cb, arg, op);
	if (rc != TOKEND_OK) {
		api_leave(c);
		pthread_mutex_unlock(&c->mu);
	}
	return rc;
}

/* The end of its start: op runs (aop_link) if rc is OK and is freed otherwise; the call
 * is left and c->mu given back. */
static int aop_started(tokend_client *c, struct aop *op, int rc, uint64_t *id)
{
	if (rc == TOKEND_OK)
		aop_link(c, op, id);
	else
		free(op);
	api_leave(c);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

int tokend_acquire_async(tokend_client *c, const void *name, size_t name_len, tokend_mode mode, uint64_t start,
			 uint64_t end, int64_t wait_ms, tokend_done_fn cb, void *arg, uint64_t *id)
{
	return tokend_acquire_async_ex(c, name, name_len, mode, start, end, wait_ms, 0, cb, arg, id);
}

int tokend_acquire_async_ex(tokend_client *c, const void *name, size_t name_len, tokend_mode mode, uint64_t start,
			    uint64_t end, int64_t wait_ms, unsigned flags, tokend_done_fn cb, void *arg, uint64_t *id)
{
	if (id)
		*id = 0;
	if (!c || !cb || check_acquire(name, name_len, mode, start, &end, wait_ms, flags) != TOKEND_OK)
		return TOKEND_EINVAL;
	struct aop *op = NULL;
	int rc = aop_start(c, AOP_ACQUIRE, cb, arg, &op);
	if (rc != TOKEND_OK)
		return rc;
	struct req *r = NULL;
	int64_t deadline = wait_deadline(c, wait_ms, tkn_now());
	if (c->sstate != S_OPEN && on_bg_thread(c))
		rc = TOKEND_ECALLBACK; /* opening a session again waits */
	if (rc == TOKEND_OK)
		rc = ensure_session(c, deadline);
	if (rc == TOKEND_OK && cache_acquire(c, name, name_len, (int)mode, start, end, &op->g)) {
		/* from the token cache: completes (op->r NULL) at the next tokend_process */
		op_name(op->op, sizeof op->op, "acquire", name, name_len, (int)mode);
		return aop_started(c, op, rc, id);
	}
	if (rc == TOKEND_OK)
		rc = acquire_req(c, name, name_len, mode, start, end, wait_ms, flags, &r);
	if (rc == TOKEND_OK) {
		op->r = r;
		op->deadline = deadline;
		op_name(op->op, sizeof op->op, "acquire", name, name_len, (int)mode);
	}
	return aop_started(c, op, rc, id);
}

int tokend_release_async(tokend_client *c, const tokend_grant *g, const void *value, size_t value_len,
			 tokend_done_fn cb, void *arg, uint64_t *id)
{
	if (id)
		*id = 0;
	if (!c || !cb || !valid_grant_arg(g) || (value && value_len > TOKEND_MAX_VALUE))
		return TOKEND_EINVAL;
	struct aop *op = NULL;
	int rc = aop_start(c, AOP_RELEASE, cb, arg, &op);
	if (rc != TOKEND_OK)
		return rc;
	struct req *r = NULL;
	rc = release_req(c, g, value, value_len, &r);
	if (rc == TOKEND_OK) {
		op->r = r; /* NULL from a callback: the engine's; done */
		op->g = *g;
		op_name(op->op, sizeof op->op, "release", g->name, g->name_len, -1);
	}
	return aop_started(c, op, rc, id);
}

int tokend_convert_async(tokend_client *c, const tokend_grant *g, tokend_mode mode, int64_t wait_ms,
			 const void *value, size_t value_len, tokend_done_fn cb, void *arg, uint64_t *id)
{
	if (id)
		*id = 0;
	if (!c || !cb || !valid_grant_arg(g) || !valid_mode((int)mode) ||
	    wait_ms < TOKEND_WAIT_FOREVER || (value && value_len > TOKEND_MAX_VALUE))
		return TOKEND_EINVAL;
	struct aop *op = NULL;
	int rc = aop_start(c, AOP_CONVERT, cb, arg, &op);
	if (rc != TOKEND_OK)
		return rc;
	struct req *r = NULL;
	op->g = *g;
	rc = convert_req(c, &op->g, mode, wait_ms, value, value_len, &r, &op->down);
	if (rc == TOKEND_OK) {
		int64_t now = tkn_now();
		op->r = r; /* NULL from a callback (a downgrade): the engine's; done */
		op->old = op->g;
		op->deadline = op->down ? now + c->connect_ns : wait_deadline(c, wait_ms, now);
		op_name(op->op, sizeof op->op, "convert", g->name, g->name_len, (int)mode);
	}
	return aop_started(c, op, rc, id);
}

int tokend_cancel_async(tokend_client *c, uint64_t id)
{
	if (!c || id == 0)
		return TOKEND_EINVAL;
	if (!c->evloop)
		return TOKEND_ENOTSUP;
	pthread_mutex_lock(&c->mu);
	int rc = TOKEND_ENOTHELD;
	for (struct aop *op = c->aops; op; op = op->next) {
		if (op->id != id)
			continue;
		if (op->phase == PH_DONE)
			break;
		if (op->kind == AOP_RELEASE || op->down) {
			rc = TOKEND_ENOTSUP; /* they do not wait: nothing to cancel */
			break;
		}
		op->cancel = 1;
		aop_step(c, op);
		rc = TOKEND_OK;
		break;
	}
	pthread_mutex_unlock(&c->mu);
	return rc;
}
