package embedded_test

import (
	"strings"
	"testing"

	"github.com/tokend/tokend/embedded"
)

// A member may listen on every address, but what it advertises (PeerURLs,
// ClientURLs, the initial cluster) must be specific.
func TestValidateListen(t *testing.T) {
	base := embedded.Config{
		Name:             "s1",
		Dir:              "/var/lib/tokend",
		PeerURLs:         []string{"http://10.0.0.1:2380"},
		ClientURLs:       []string{"http://10.0.0.1:2379"},
		ListenPeerURLs:   []string{"http://0.0.0.0:2380"},
		ListenClientURLs: []string{"http://0.0.0.0:2379", "http://127.0.0.1:2379"},
	}
	if err := base.Validate(); err != nil {
		t.Fatalf("listen on every address, advertise one: %v", err)
	}
	// Advertised by DNS name (a StatefulSet's stable names, compose
	// service names), listened on by address.
	byName := base
	byName.PeerURLs = []string{"http://server-0.tokend-server.tokend.svc.cluster.local:2380"}
	byName.ClientURLs = []string{"http://server-0.tokend-server.tokend.svc.cluster.local:2379"}
	byName.InitialCluster = "s1=http://server-0.tokend-server.tokend.svc.cluster.local:2380,s2=http://server2:2380,s3=http://10.0.0.3:2380"
	if err := byName.Validate(); err != nil {
		t.Fatalf("advertise DNS names, listen on every address: %v", err)
	}
	for _, tt := range []struct {
		name string
		edit func(*embedded.Config)
		want string
	}{
		{"DNS name without a listen URL", func(c *embedded.Config) {
			c.PeerURLs, c.ListenPeerURLs = []string{"http://server1:2380"}, nil
		}, "ListenPeerURLs[0]"},
		{"DNS name as a listen URL", func(c *embedded.Config) { c.ListenClientURLs = []string{"http://server1:2379"} }, "ListenClientURLs[0]"},
		{"not a DNS name", func(c *embedded.Config) { c.PeerURLs = []string{"http://-server_1:2380"} }, "PeerURLs[0]"},
		{"DNS name in the initial cluster", func(c *embedded.Config) {
			c.InitialCluster = "s1=http://10.0.0.1:2380,s2=http://bad_name:2380"
		}, "InitialCluster member s2"},
		{"unspecified advertised peer URL", func(c *embedded.Config) { c.PeerURLs = []string{"http://0.0.0.0:2380"} }, "PeerURLs[0]"},
		{"unspecified advertised client URL", func(c *embedded.Config) { c.ClientURLs = []string{"http://[::]:2379"} }, "ClientURLs[0]"},
		{"listen twice on one address", func(c *embedded.Config) { c.ListenClientURLs = c.ListenPeerURLs }, "ListenClientURLs[0]"},
		{"listen URL with a path", func(c *embedded.Config) { c.ListenPeerURLs = []string{"http://0.0.0.0:2380/x"} }, "ListenPeerURLs[0]"},
	} {
		c := base
		tt.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error about %s", tt.name, err, tt.want)
		}
	}
}
