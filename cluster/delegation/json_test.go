package delegation

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
)

// checkJSONRoundTrip checks that m survives MarshalJSON and UnmarshalJSON
// exactly, and that re-marshalling gives the same bytes.
func checkJSONRoundTrip(t *testing.T, m Map) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	var back Map
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("Unmarshal(%s): %v", b, err)
	}
	if !sameShards(back, m) || back.Version != m.Version || !slices.Equal(back.Workers, m.Workers) {
		t.Fatalf("round trip changed the map:\n%s", b)
	}
	if !back.Equal(m) {
		t.Fatalf("round trip changed the map's representation:\n%s", b)
	}
	b2, err := back.MarshalJSON()
	if err != nil || string(b2) != string(b) {
		t.Fatalf("re-marshal differs (%v):\n%s\n%s", err, b, b2)
	}
	return b
}

// sameShards reports whether a and b give every shard the same owner and
// epoch, whatever their worker tables' order.
func sameShards(a, b Map) bool {
	if a.Shards() != b.Shards() {
		return false
	}
	for s := range a.Shards() {
		ao, ae, aok := a.Lookup(s)
		bo, be, bok := b.Lookup(s)
		if ao != bo || ae != be || aok != bok {
			return false
		}
	}
	return true
}

// docExample is the map of the example in the package comment.
const docExample = `{"version":7,"shards":8,"workers":[{"id":"w1","incarnation":"694d5765fc71500b","ranges":[[0,3,1],[6,1,2]]},{"id":"w2","incarnation":"1b","ranges":[[3,3,1],[7,1,2]]}]}`

func TestJSONExample(t *testing.T) {
	m := Map{
		Version: 7,
		Workers: []Owner{{"w1", 0x694d5765fc71500b}, {"w2", 0x1b}},
		Owner:   []int32{0, 0, 0, 1, 1, 1, 0, 1},
		Epoch:   []uint32{1, 1, 1, 1, 1, 1, 2, 2},
	}
	if b := checkJSONRoundTrip(t, m); string(b) != docExample {
		t.Fatalf("got  %s\nwant %s", b, docExample)
	}
	// Unmarshal is lenient about order, merging and whitespace.
	loose := `{"shards":8, "version":7, "extra":true, "workers":[
	  {"id":"w1","incarnation":"694D5765FC71500B","ranges":[[6,1,2],[0,1,1],[1,2,1]]},
	  {"id":"w2","incarnation":"001b","ranges":[[7,1,2],[3,3,1]]}]}`
	var got Map
	if err := json.Unmarshal([]byte(loose), &got); err != nil || !got.Equal(m) {
		t.Fatalf("Unmarshal(loose) = %+v, %v", got, err)
	}
	// Unowned shards, owners of nothing, odd ids and the empty map.
	checkJSONRoundTrip(t, Map{Version: 1, Workers: []Owner{{"idle", 5}, {`w"<\>` + "\u00e9\x01", 0}}, Owner: []int32{-1, 1, -1}, Epoch: []uint32{0, 9, 0}})
	checkJSONRoundTrip(t, Map{})
	checkJSONRoundTrip(t, Unowned(3, 5))
}

func TestJSONErrors(t *testing.T) {
	for _, tc := range []string{
		`[]`,
		`{"version":-1,"shards":1}`,
		`{"shards":-1}`,
		`{"shards":1048577}`,
		`{"shards":4,"workers":[{"id":"","incarnation":"1","ranges":[]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1"},{"id":"a","incarnation":"01"}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"0x1"}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":""}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"10000000000000000"}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":1}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[0,1]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[0,1,1,1]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[0,0,1]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[4,1,1]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[3,2,1]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[1,18446744073709551615,1]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[0,1,0]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[0,1,16777216]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[0,1,-1]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[0,2,1],[1,1,1]]}]}`,
		`{"shards":4,"workers":[{"id":"a","incarnation":"1","ranges":[[0,2,1]]},{"id":"b","incarnation":"1","ranges":[[1,1,1]]}]}`,
	} {
		var m Map
		if err := json.Unmarshal([]byte(tc), &m); !errors.Is(err, ErrBadMap) {
			t.Errorf("Unmarshal(%s) = %v, want ErrBadMap", tc, err)
		}
	}
	if _, err := json.Marshal(Map{Owner: []int32{0}, Epoch: []uint32{1}}); !errors.Is(err, ErrBadMap) {
		t.Errorf("Marshal(invalid) = %v, want ErrBadMap", err)
	}
}

// FuzzUnmarshalJSON checks that whatever UnmarshalJSON accepts is a valid map
// that round-trips exactly.
func FuzzUnmarshalJSON(f *testing.F) {
	f.Add([]byte(docExample))
	f.Add([]byte(`{"version":1,"shards":3,"workers":[{"id":"a","incarnation":"ff","ranges":[[2,1,5],[0,1,1]]}]}`))
	f.Add([]byte(`{"shards":2,"workers":[{"id":"a","incarnation":"1","ranges":[[0,2,1]]},{"id":"b","incarnation":"1","ranges":[]}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Map
		if err := m.UnmarshalJSON(data); err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted an invalid map: %v", err)
		}
		checkJSONRoundTrip(t, m)
	})
}
