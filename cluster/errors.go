package cluster

import "errors"

// Errors of the package; test them with errors.Is.
var (
	// ErrNoConfig: /tokend/config does not exist yet.
	ErrNoConfig = errors.New("cluster: no /tokend/config yet (is a server running?)")
	// ErrBadConfig: /tokend/config does not parse.
	ErrBadConfig = errors.New("cluster: malformed /tokend/config")
	// ErrTLSFiles: a certificate, key or CA file is missing or unusable
	// (Dial wraps it with the file at fault).
	ErrTLSFiles = errors.New("cluster: etcd TLS files")
	// ErrEndpoint: an endpoint's scheme does not match the dial's security
	// (http:// with TLS, https:// without).
	ErrEndpoint = errors.New("cluster: etcd endpoint")
)
