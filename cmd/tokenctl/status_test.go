package main

import (
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Status shows each worker's advertised addresses and says so when one is
// unspecified (an older tokend's registration): clients cannot reach it.
func TestStatusAddresses(t *testing.T) {
	st, err := buildStatus([]*mvccpb.KeyValue{
		{Key: []byte("/tokend/leader/1"), Value: []byte(`{"name":"s1","http":"10.77.0.1:7780"}`), CreateRevision: 5},
		{Key: []byte("/tokend/workers/w1"), Value: []byte(`{"id":"w1","incarnation":"a","udp":"10.77.0.11:7700","http":"10.77.0.11:7780","handoff":"10.77.0.11:41000"}`)},
		{Key: []byte("/tokend/workers/w2"), Value: []byte(`{"id":"w2","incarnation":"b","udp":"0.0.0.0:7700"}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	printStatus(&out, st)
	for _, want := range []string{"http 10.77.0.1:7780", "10.77.0.11:7700", "10.77.0.11:7780", "10.77.0.11:41000", `warning: w2 registered "0.0.0.0:7700"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "warning: w1") {
		t.Errorf("warned about a reachable worker:\n%s", out.String())
	}
}
