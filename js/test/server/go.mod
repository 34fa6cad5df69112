// A wsroom server for the tests of the JavaScript client (js/). Test-only
// and never released; in the repository, go.work builds it with the core of
// the tree.
module github.com/wsroom/wsroom/js/test/server

go 1.26.0

require github.com/wsroom/wsroom v0.5.0

require github.com/coder/websocket v1.8.15 // indirect
