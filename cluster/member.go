package cluster

import (
	"context"
	"net"
	"net/url"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// MemberAnswers reports whether an etcd member answers a Status request on
// one of its client or peer urls. A refused TCP connection answers "no" at
// once, without waiting for the client's dial timeout; each try is bounded
// by 1 s to connect and 2 s to answer. Replacing a member (embedded.Replace,
// tokenctl member) refuses to remove one that answers.
func MemberAnswers(ctx context.Context, cli *clientv3.Client, urls []string) bool {
	for _, s := range urls {
		u, err := url.Parse(s)
		if err != nil {
			continue
		}
		d := net.Dialer{Timeout: time.Second}
		conn, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			continue
		}
		conn.Close()
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = cli.Status(sctx, s)
		cancel()
		if err == nil {
			return true
		}
	}
	return false
}
