// Package guard holds the worker's defences against a flood of session
// opens (wire/SPEC.md section 20): token-bucket rate limits, overall and
// per key (a source address), and the bounded table of recent opens that
// answers a retransmitted SESSION_OPEN without opening a second session.
// It is a pure core inside the worker's UDP shell: no sockets, goroutines,
// clock, randomness, logging or metrics; time comes in as nanoseconds on
// the shell's monotonic clock. It imports only the standard library.
package guard

// Bucket is a token bucket: Rate tokens per second, at most Burst saved.
// Its zero value with Rate 0 allows nothing; a negative Rate allows
// everything.
type Bucket struct {
	Rate  float64 // tokens per second
	Burst float64 // most tokens saved
	have  float64
	at    int64 // when have was computed
	used  bool  // at is set
}

// Allow takes one token at now if there is one.
func (b *Bucket) Allow(now int64) bool {
	if b.Rate < 0 {
		return true
	}
	b.refill(now)
	if b.have < 1 {
		return false
	}
	b.have--
	return true
}

func (b *Bucket) refill(now int64) {
	if !b.used {
		b.have, b.at, b.used = b.Burst, now, true
		return
	}
	if now > b.at {
		b.have = min(b.Burst, b.have+float64(now-b.at)/1e9*b.Rate)
		b.at = now
	}
}

// full reports whether the bucket is back at its burst by now (so that
// forgetting it changes nothing).
func (b *Bucket) full(now int64) bool {
	b.refill(now)
	return b.have >= b.Burst
}

// Buckets rate-limits by key: one Bucket per key, at most Max keys. A key
// not yet known when Max buckets are in use is refused (and counted by the
// caller as the table being full); Sweep forgets the buckets that refilled.
type Buckets[K comparable] struct {
	Rate, Burst float64
	Max         int
	m           map[K]*Bucket
}

// Verdict is the outcome of Buckets.Allow.
type Verdict uint8

const (
	Allowed Verdict = iota
	Limited         // the key's rate is exceeded
	Full            // a new key and no room for its bucket
)

// Allow takes one token of key's bucket at now.
func (bs *Buckets[K]) Allow(key K, now int64) Verdict {
	if bs.m == nil {
		bs.m = map[K]*Bucket{}
	}
	b := bs.m[key]
	if b == nil {
		if len(bs.m) >= bs.Max {
			return Full
		}
		b = &Bucket{Rate: bs.Rate, Burst: bs.Burst}
		bs.m[key] = b
	}
	if !b.Allow(now) {
		return Limited
	}
	return Allowed
}

// Sweep forgets the buckets that are full again at now.
func (bs *Buckets[K]) Sweep(now int64) {
	for k, b := range bs.m {
		if b.full(now) {
			delete(bs.m, k)
		}
	}
}

// Len is the number of buckets kept.
func (bs *Buckets[K]) Len() int { return len(bs.m) }

// Recent is the table of recent opens: a value per key (the reply to an
// open, keyed by key name and nonce), kept until its expiry, at most Max.
type Recent[K comparable, V any] struct {
	Max int
	m   map[K]recent[V]
}

type recent[V any] struct {
	v       V
	expires int64
}

// Get returns key's value if it has not expired at now.
func (r *Recent[K, V]) Get(key K, now int64) (V, bool) {
	e, ok := r.m[key]
	if !ok || e.expires <= now {
		var zero V
		return zero, false
	}
	return e.v, true
}

// Put stores v for key until expires; false if the table is full (after
// forgetting what expired by now) and key is not in it.
func (r *Recent[K, V]) Put(key K, v V, now, expires int64) bool {
	if r.m == nil {
		r.m = map[K]recent[V]{}
	}
	if _, ok := r.m[key]; !ok && len(r.m) >= r.Max {
		r.Sweep(now)
		if len(r.m) >= r.Max {
			return false
		}
	}
	r.m[key] = recent[V]{v: v, expires: expires}
	return true
}

// Delete forgets key.
func (r *Recent[K, V]) Delete(key K) { delete(r.m, key) }

// Sweep forgets the entries expired at now.
func (r *Recent[K, V]) Sweep(now int64) {
	for k, e := range r.m {
		if e.expires <= now {
			delete(r.m, k)
		}
	}
}

// Len is the number of entries kept.
func (r *Recent[K, V]) Len() int { return len(r.m) }
