package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
)

// This test stops the server with SIGSTOP and reads its state from /proc.

// TestAppendAgainAfterLostAck appends a message while the server is
// stopped (SIGSTOP), so that the publish is sent and its acknowledgement
// does not come before the context ends; the server then resumes and
// stores it. Appending the same message again, as a caller's retry does,
// must return the stored message, not store a second copy.
func TestAppendAgainAfterLostAck(t *testing.T) {
	srv := startNATS(t)
	b := newNodeOn(t, connectTo(t, srv.url), "wsroomtest.r"+newID())
	ctx := t.Context()
	const room = "lost-ack"
	if _, err := b.Append(ctx, room, wsroom.Message{From: "c1", Data: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	m := wsroom.Message{From: "c1", Time: time.Now(), Data: []byte("second")}
	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// The signal takes effect a moment later: wait until the process is
	// stopped ("T" in /proc/<pid>/stat).
	stat := fmt.Sprintf("/proc/%d/stat", srv.cmd.Process.Pid)
	waitUntil(t, "the server stopped", func() bool {
		b, err := os.ReadFile(stat)
		if err != nil {
			t.Fatalf("reading %s: %v", stat, err)
		}
		_, rest, _ := strings.Cut(string(b), ") ")
		return strings.HasPrefix(rest, "T")
	})
	actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := b.Append(actx, room, m)
	cancel()
	if err := srv.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append while the server is stopped = %v, want a deadline exceeded", err)
	}
	// The publish reached the server: it is stored once the server runs.
	waitUntil(t, "the first attempt stored", func() bool {
		last, err := b.Last(ctx, room, 1)
		return err == nil && len(last) == 1 && last[0].Seq == 2
	})
	got, err := b.Append(ctx, room, m)
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != 2 || string(got.Data) != "second" {
		t.Errorf("Append again = seq %d %q, want the stored message, seq 2 %q", got.Seq, got.Data, "second")
	}
	all, err := b.Last(ctx, room, 10)
	if err != nil {
		t.Fatal(err)
	}
	var datas []string
	for _, m := range all {
		datas = append(datas, string(m.Data))
	}
	if len(all) != 2 {
		t.Errorf("room holds %q, want [first second]", datas)
	}
	// A different message is stored as usual.
	if got, err := b.Append(ctx, room, wsroom.Message{From: "c1", Data: []byte("third")}); err != nil || got.Seq != 3 {
		t.Errorf("Append of another message = seq %d, %v; want seq 3", got.Seq, err)
	}
}
