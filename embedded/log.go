package embedded

import (
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Messages etcd logs that say nothing useful in embedded use. Matching is by
// exact message: if etcd rewords one, it is simply logged again.
var (
	// Logged at every start.
	alwaysQuiet = map[string]bool{
		// One client port serves both, by design: splitting them would cost
		// every deployment a second client port.
		"Running http and grpc server on single port. This is not recommended for production.": true,
		// Simple tokens are issued only to users who log in with a
		// password; tokend's users have none and authenticate by their
		// client certificate.
		"simple token is not cryptographically signed": true,
	}
	// Logged, as errors with a stack trace, at every clean shutdown: the
	// listeners report that they were closed.
	closingQuiet = map[string]bool{
		"setting up serving from embedded etcd failed.": true,
		"stopping insecure grpc server due to error":    true,
		"stopped insecure grpc server due to error":     true,
		"stopping secure grpc server due to error":      true,
		"stopped secure grpc server due to error":       true,
	}
)

// quietLogger returns lg without the messages above; those in closingQuiet
// are dropped only once *closing is true.
func quietLogger(lg *zap.Logger, closing *atomic.Bool) *zap.Logger {
	return lg.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return quietCore{Core: c, closing: closing}
	}))
}

type quietCore struct {
	zapcore.Core
	closing *atomic.Bool
}

func (c quietCore) With(fields []zapcore.Field) zapcore.Core {
	return quietCore{Core: c.Core.With(fields), closing: c.closing}
}

func (c quietCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if alwaysQuiet[e.Message] || (closingQuiet[e.Message] && c.closing.Load()) {
		return ce
	}
	return c.Core.Check(e, ce)
}
