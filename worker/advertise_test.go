package worker

import (
	"errors"
	"net"
	"testing"
)

// The registration never carries an unspecified address: advertise
// fills in ports and fallback hosts and refuses 0.0.0.0 and ::.
func TestAdvertise(t *testing.T) {
	any4 := &net.UDPAddr{IP: net.IPv4zero, Port: 7700}
	for _, tt := range []struct {
		adv      string
		bound    net.Addr
		fallback string
		want     string
		err      error
	}{
		{"", &net.UDPAddr{IP: net.ParseIP("127.0.0.1"), Port: 7700}, "", "127.0.0.1:7700", nil},
		{"10.0.0.5:7700", any4, "", "10.0.0.5:7700", nil},
		{"10.0.0.5:0", any4, "", "10.0.0.5:7700", nil},
		{"10.0.0.5:17700", any4, "", "10.0.0.5:17700", nil},
		{"", &net.TCPAddr{IP: net.IPv6unspecified, Port: 4000}, "10.0.0.5", "10.0.0.5:4000", nil},
		{"", &net.TCPAddr{Port: 4000}, "fd00::5", "[fd00::5]:4000", nil},
		{"", any4, "", "", ErrAdvertise},
		{"0.0.0.0:7700", any4, "10.0.0.5", "", ErrAdvertise},
		{"[::]:7700", any4, "", "", ErrAdvertise},
	} {
		got, err := advertise(tt.adv, tt.bound, tt.fallback)
		if got != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("advertise(%q, %v, %q) = %q, %v; want %q, %v", tt.adv, tt.bound, tt.fallback, got, err, tt.want, tt.err)
		}
	}
}
