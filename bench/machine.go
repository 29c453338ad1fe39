package bench

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Machine describes where a run happened.
type Machine struct {
	Cores      int    `json:"cores"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	CPUModel   string `json:"cpu_model"`
	MemTotal   string `json:"mem_total"`
	Hostname   string `json:"hostname"`
}

// ThisMachine returns the machine this process runs on. The CPU model and
// memory come from /proc (empty where there is none).
func ThisMachine() Machine {
	host, _ := os.Hostname()
	return Machine{
		Cores:      runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion:  runtime.Version(),
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		CPUModel:   procField("/proc/cpuinfo", "model name"),
		MemTotal:   procField("/proc/meminfo", "MemTotal"),
		Hostname:   host,
	}
}

// procField returns the value of the first "key: value" line of a /proc
// file, or "".
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return ""
}

// machineBusy returns the CPU time all processes of the machine have used
// (every state of /proc/stat's "cpu" line except idle and iowait), or 0
// where there is no /proc.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	if len(f) > 9 { // guest and guest_nice are already counted in user and nice
		for _, v := range f[9:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			busy -= n
		}
	}
	return time.Duration(busy) * (time.Second / 100) // USER_HZ
}

// loadAvg returns the 1, 5 and 15 minute load averages as /proc/loadavg
// prints them, or "".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// rssBytes returns the resident set size of the whole process (VmRSS), or
// 0 where /proc is missing. It counts everything in the process: etcd,
// clients, workers and memory the Go runtime has not returned yet.
func rssBytes() int64 {
	v := procField("/proc/self/status", "VmRSS") // "123456 kB"
	n, err := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
	if err != nil {
		return 0
	}
	return n << 10
}

// heapBytes returns the live Go heap after a full collection: HeapAlloc
// after runtime.GC, twice so that finalizers' garbage goes too.
func heapBytes() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// settle waits (at most d) until the number of goroutines is at most
// want, and returns the last count seen.
func settle(want int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		n := runtime.NumGoroutine()
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// procCPU returns the CPU time (user + system) process pid has used so
// far, from /proc/<pid>/stat, or 0 where there is none (or it is gone).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')') // the command name may hold spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)          // field 14
	st, _ := strconv.ParseInt(f[12], 10, 64)          // field 15
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ
}
