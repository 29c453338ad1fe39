package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRunControl(t *testing.T) {
	w, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-upstream", w.LocalAddr().String(), "-seed", "7", "-tcp", "127.0.0.1:0=127.0.0.1:1"}, pw, io.Discard)
		pw.Close()
	}()
	defer func() {
		cancel()
		go io.Copy(io.Discard, pr)
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("exit code %d", code)
			}
		case <-time.After(5 * time.Second):
			t.Error("run did not return after cancel")
		}
	}()
	sc := bufio.NewScanner(pr)
	var control, front, relay string
	for control == "" && sc.Scan() {
		f := strings.Fields(sc.Text())
		switch f[0] {
		case "control":
			control = f[1]
		case "frontend":
			front = f[2]
		case "tcp":
			relay = f[1]
		}
	}
	if control == "" || front == "" || relay == "" {
		t.Fatalf("control %q frontend %q tcp %q", control, front, relay)
	}
	post := func(path string) int {
		resp, err := http.Post("http://"+control+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := post("/rule?dir=up&cut=1"); c != 200 {
		t.Fatalf("rule: %d", c)
	}
	if c := post("/rule?drop=2"); c != 400 {
		t.Fatalf("bad rule accepted: %d", c)
	}
	if c := post("/tcp?listen=" + relay + "&cut=both"); c != 200 {
		t.Fatalf("tcp: %d", c)
	}
	c, err := net.Dial("udp4", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	// The cut drops it: the stats say so.
	var st struct{ Received, Dropped uint64 }
	for deadline := time.Now().Add(2 * time.Second); st.Dropped == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		resp, err := http.Get("http://" + control + "/stats")
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
	}
	if st.Received != 1 || st.Dropped != 1 {
		t.Fatalf("stats %+v", st)
	}
	if c := post("/clear"); c != 200 {
		t.Fatalf("clear: %d", c)
	}
}
