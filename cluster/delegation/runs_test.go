package delegation

import (
	"errors"
	"slices"
	"testing"
)

func TestRuns(t *testing.T) {
	ws := []Owner{{"a", 1}, {"b", 2}}
	m := Map{
		Version: 3,
		Workers: ws,
		Owner:   []int32{0, 0, 0, 1, 1, -1, -1, 0, 0, 1},
		Epoch:   []uint32{1, 1, 2, 1, 1, 0, 0, 4, 4, 1},
	}
	want := []Run{
		{First: 0, Count: 2, Owner: 0, Epoch: 1},
		{First: 2, Count: 1, Owner: 0, Epoch: 2},
		{First: 3, Count: 2, Owner: 1, Epoch: 1},
		{First: 5, Count: 2, Owner: NoOwner, Epoch: 0},
		{First: 7, Count: 2, Owner: 0, Epoch: 4},
		{First: 9, Count: 1, Owner: 1, Epoch: 1},
	}
	got := Runs(m)
	if !slices.Equal(got, want) {
		t.Fatalf("Runs = %v\nwant %v", got, want)
	}
	back, err := FromRuns(3, 10, ws, got)
	if err != nil || !back.Equal(m) {
		t.Fatalf("FromRuns = %+v, %v", back, err)
	}
	// Unowned runs may be left out, and runs need not be maximal.
	sparse := []Run{want[0], want[1], {First: 3, Count: 1, Owner: 1, Epoch: 1}, {First: 4, Count: 1, Owner: 1, Epoch: 1}, want[4], want[5]}
	if back, err := FromRuns(3, 10, ws, sparse); err != nil || !back.Equal(m) {
		t.Fatalf("FromRuns(sparse) = %+v, %v", back, err)
	}
	if Runs(Map{}) != nil {
		t.Fatal("Runs of the zero map is not nil")
	}
	if back, err := FromRuns(0, 0, nil, nil); err != nil || !back.Equal(Map{}) {
		t.Fatalf("FromRuns(empty) = %+v, %v", back, err)
	}
}

func TestFromRunsErrors(t *testing.T) {
	ws := []Owner{{"a", 1}}
	for _, tc := range []struct {
		name   string
		shards int
		runs   []Run
		want   error
	}{
		{"negative shards", -1, nil, ErrShardCount},
		{"too many shards", MaxShards + 1, nil, ErrShardCount},
		{"empty run", 4, []Run{{First: 0, Count: 0, Owner: 0, Epoch: 1}}, ErrBadMap},
		{"overlap", 4, []Run{{First: 0, Count: 2, Owner: 0, Epoch: 1}, {First: 1, Count: 1, Owner: 0, Epoch: 1}}, ErrBadMap},
		{"out of order", 4, []Run{{First: 2, Count: 1, Owner: 0, Epoch: 1}, {First: 0, Count: 1, Owner: 0, Epoch: 1}}, ErrBadMap},
		{"past the end", 4, []Run{{First: 3, Count: 2, Owner: 0, Epoch: 1}}, ErrBadMap},
		{"count overflow", 4, []Run{{First: 3, Count: 1<<32 - 1, Owner: 0, Epoch: 1}}, ErrBadMap},
		{"bad owner", 4, []Run{{First: 0, Count: 1, Owner: 1, Epoch: 1}}, ErrBadMap},
		{"unowned with epoch", 4, []Run{{First: 0, Count: 1, Owner: NoOwner, Epoch: 1}}, ErrBadMap},
		{"owned at epoch 0", 4, []Run{{First: 0, Count: 1, Owner: 0, Epoch: 0}}, ErrBadMap},
		{"epoch too big", 4, []Run{{First: 0, Count: 1, Owner: 0, Epoch: MaxEpoch + 1}}, ErrBadMap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := FromRuns(1, tc.shards, ws, tc.runs); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}
