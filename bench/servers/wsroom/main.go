// Command wsroom is the benchmark server built on wsroom: one room, default
// options except pings (off), so every text message from a client is
// published to every client, the sender too.
package main

import (
	"net/http"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/bench/internal/serve"
)

func main() {
	room := wsroom.New(wsroom.WithPing(0, 0))
	defer room.Close()
	mux := http.NewServeMux()
	mux.Handle("/", room.Handler())
	serve.Main("wsroom", mux)
}
