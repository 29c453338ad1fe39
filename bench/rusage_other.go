//go:build !unix

package bench

import "time"

// cpuTime is not measured on this platform; ops per CPU-second are then 0.
func cpuTime() time.Duration { return 0 }

// childrenCPU is not measured on this platform.
func childrenCPU() time.Duration { return 0 }
