//go:build !linux

package clientlib

import "net"

func newBatchReader(bc batchConn, _ *net.UDPConn) batchReader { return newXnetReader(bc) }
