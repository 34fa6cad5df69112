package protocoltest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func faultDial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	conn, _, err := websocket.Dial(t.Context(), url, &websocket.DialOptions{Subprotocols: []string{FaultSubprotocol}})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return conn
}

func faultRead(t *testing.T, conn *websocket.Conn) (map[string]any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, b, err := conn.Read(ctx)
	if err != nil {
		return nil, err
	}
	var f map[string]any
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	return f, nil
}

func faultWrite(t *testing.T, conn *websocket.Conn, frame string) {
	t.Helper()
	if err := conn.Write(t.Context(), websocket.MessageText, []byte(frame)); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

// The kit's server refuses a handshake without wsroom.v3, sends hello
// first, answers a join with joined and its message, and logs requests.
func TestFaultServerBasics(t *testing.T) {
	fs := NewFaultServer()
	srv := httptest.NewServer(fs)
	defer srv.Close()
	ws := "ws" + strings.TrimPrefix(srv.URL, "http")

	_, resp, err := websocket.Dial(t.Context(), ws+"/ok", &websocket.DialOptions{Subprotocols: []string{"wsroom.v1"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("handshake with wsroom.v1 only: %v, want HTTP 400", err)
	}

	conn := faultDial(t, ws+"/ok?session=x&rate=3")
	hello, err := faultRead(t, conn)
	if err != nil || hello["op"] != "hello" || hello["conn"] != "fault-1" || hello["limits"].(map[string]any)["rate"] != 3.0 {
		t.Fatalf("first frame %v, %v; want hello with rate 3", hello, err)
	}
	faultWrite(t, conn, `{"op":"join","room":"a","id":"j1"}`)
	joined, _ := faultRead(t, conn)
	msg, _ := faultRead(t, conn)
	if joined["op"] != "joined" || joined["id"] != "j1" || joined["seq"] != 0.0 || msg["op"] != "msg" || msg["seq"] != 1.0 || msg["room"] != "a" {
		t.Errorf("join answered %v then %v", joined, msg)
	}
	res, err := http.Get(srv.URL + "/ok?session=x")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var log []FaultRequest
	if err := json.NewDecoder(res.Body).Decode(&log); err != nil || len(log) != 1 || log[0].Op != "join" || log[0].ID != "j1" || log[0].Conn != 1 {
		t.Errorf("log %+v, %v", log, err)
	}
	if other := fs.Log("y"); len(other) != 0 {
		t.Errorf("log of another session: %+v", other)
	}
}

// half-frame ends the connection in the middle of the ack's frame, with no
// close frame.
func TestFaultServerHalfFrame(t *testing.T) {
	srv := httptest.NewServer(NewFaultServer())
	defer srv.Close()
	conn := faultDial(t, "ws"+strings.TrimPrefix(srv.URL, "http")+"/"+ScenarioHalfFrame)
	faultRead(t, conn) // hello
	faultWrite(t, conn, `{"op":"join","room":"a","id":"j1"}`)
	faultRead(t, conn) // joined
	faultRead(t, conn) // msg
	faultWrite(t, conn, `{"op":"pub","room":"a","id":"p1","data":1}`)
	if echo, err := faultRead(t, conn); err != nil || echo["op"] != "msg" {
		t.Fatalf("echo %v, %v", echo, err)
	}
	_, err := faultRead(t, conn)
	if err == nil || websocket.CloseStatus(err) != -1 {
		t.Errorf("after half a frame: %v, want a broken connection", err)
	}
}

// close-1011 closes with 1011 after the first join's message.
func TestFaultServerClose(t *testing.T) {
	srv := httptest.NewServer(NewFaultServer())
	defer srv.Close()
	conn := faultDial(t, "ws"+strings.TrimPrefix(srv.URL, "http")+"/"+ScenarioClose1011)
	faultRead(t, conn)
	faultWrite(t, conn, `{"op":"join","room":"a","id":"j1"}`)
	faultRead(t, conn)
	faultRead(t, conn)
	_, err := faultRead(t, conn)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusInternalError {
		t.Errorf("after the join: %v, want close 1011", err)
	}
}
