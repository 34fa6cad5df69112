// Command melody is the broadcast server of github.com/olahol/melody's
// README: every message is broadcast to every session, with melody's
// default configuration (a queue of 256 messages per session; a session
// whose queue is full is closed).
package main

import (
	"net/http"

	"github.com/olahol/melody"
	"github.com/wsroom/wsroom/bench/internal/serve"
)

func main() {
	m := melody.New()
	m.HandleMessage(func(s *melody.Session, msg []byte) {
		m.Broadcast(msg)
	})
	serve.Main("melody", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.HandleRequest(w, r)
	}))
}
