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
	for _, tt := range []struct {
		name string
		edit func(*embedded.Config)
		want string
	}{
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
