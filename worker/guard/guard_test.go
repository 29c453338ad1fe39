package guard

import (
	"testing"
	"time"
)

const sec = int64(time.Second)

func TestBucket(t *testing.T) {
	b := Bucket{Rate: 2, Burst: 3}
	for i := range 3 {
		if !b.Allow(0) {
			t.Fatalf("burst: token %d refused", i)
		}
	}
	if b.Allow(0) {
		t.Fatal("a fourth token at once")
	}
	if b.Allow(sec / 4) {
		t.Fatal("half a token given")
	}
	if !b.Allow(sec / 2) {
		t.Fatal("one token after 0.5 s at 2/s refused")
	}
	if !b.Allow(100*sec) || !b.Allow(100*sec) || !b.Allow(100*sec) || b.Allow(100*sec) {
		t.Fatal("refill beyond the burst")
	}
	if (&Bucket{}).Allow(0) {
		t.Fatal("zero rate and burst allowed one")
	}
	if !(&Bucket{Rate: -1}).Allow(0) {
		t.Fatal("negative rate refused")
	}
}

func TestBuckets(t *testing.T) {
	bs := Buckets[string]{Rate: 1, Burst: 1, Max: 2}
	if bs.Allow("a", 0) != Allowed || bs.Allow("a", 0) != Limited {
		t.Fatal("per-key rate")
	}
	if bs.Allow("b", 0) != Allowed {
		t.Fatal("another key is limited by the first")
	}
	if bs.Allow("c", 0) != Full {
		t.Fatal("a third key with Max 2")
	}
	bs.Sweep(sec / 2) // neither refilled
	if bs.Len() != 2 {
		t.Fatalf("swept buckets still in use: %d left", bs.Len())
	}
	bs.Sweep(sec)
	if bs.Len() != 0 || bs.Allow("c", sec) != Allowed {
		t.Fatal("refilled buckets not forgotten")
	}
}

func TestRecent(t *testing.T) {
	r := Recent[int, string]{Max: 2}
	if !r.Put(1, "one", 0, 5*sec) || !r.Put(2, "two", 0, sec) {
		t.Fatal("put below Max")
	}
	if v, ok := r.Get(1, 0); !ok || v != "one" {
		t.Fatal("get")
	}
	if r.Put(3, "three", 0, sec) {
		t.Fatal("put beyond Max")
	}
	if !r.Put(1, "uno", 0, 5*sec) {
		t.Fatal("replacing a key of a full table")
	}
	if _, ok := r.Get(2, sec); ok {
		t.Fatal("expired entry returned")
	}
	if !r.Put(3, "three", sec, 2*sec) {
		t.Fatal("an expired entry holds its place")
	}
	r.Delete(3)
	r.Sweep(10 * sec)
	if r.Len() != 0 {
		t.Fatalf("%d entries after sweeping", r.Len())
	}
}
