// Command wsroom is the benchmark server built on wsroom: one room, default
// options except pings (off) and the per-client rate limit (lifted: the
// load tool's publishers send thousands of messages a second, and the
// other designs have no such limit), so every text message from a client
// is published to every client, the sender too.
package main

import (
	"net/http"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/bench/internal/serve"
)

func main() {
	room := wsroom.New(wsroom.WithPing(0, 0), wsroom.WithRateLimit(0, 0, wsroom.Throttle))
	defer room.Close()
	mux := http.NewServeMux()
	mux.Handle("/", room.Handler())
	serve.Main("wsroom", mux)
}
