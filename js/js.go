// Package js serves wsroom's JavaScript client to browsers, from the Go
// server that serves the rooms, as socket.io's server serves its client.
//
// The client is src/index.js of the npm package @wsroom/client, embedded
// as it is: one ES module without dependencies, with connect (many rooms on
// one connection, Registry.MuxHandler) and connectRoom (one room per
// connection, Room.Handler). README.md in this directory describes its API.
// Mount Handler at a path of your choice and import it from a module
// script:
//
//	mux.Handle("GET /wsroom.js", js.Handler())
//
//	<script type="module">
//	import { connect } from "/wsroom.js";
//	const client = connect("/ws");
//	</script>
package js

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"time"
)

//go:embed src/index.js
var source []byte

// ContentType is the type the client is served with.
const ContentType = "text/javascript; charset=utf-8"

// etag is the strong entity tag of source: its SHA-256, shortened.
var etag = func() string {
	sum := sha256.Sum256(source)
	return `"` + hex.EncodeToString(sum[:16]) + `"`
}()

// Source returns the client's source, src/index.js: a copy, which the
// caller may keep or change.
func Source() []byte { return bytes.Clone(source) }

// Handler returns an http.Handler that serves the client to GET and HEAD
// requests at whatever path it is mounted, and answers other methods with
// 405 Method Not Allowed. The response has the type ContentType, the
// header X-Content-Type-Options: nosniff, and an ETag: the browser keeps
// the file, asks again each time it is needed (Cache-Control: no-cache),
// and gets 304 Not Modified until the server serves another version of
// the client. Ranges and conditional requests are handled by
// http.ServeContent. The handler is safe for concurrent use.
func Handler() http.Handler { return handler{} }

type handler struct{}

func (handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed: the client is served to GET and HEAD", http.StatusMethodNotAllowed)
		return
	}
	h.Set("Content-Type", ContentType)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", etag)
	// No modification time: the ETag alone decides what is fresh.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(source))
}
