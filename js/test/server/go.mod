// A wsroom server for the tests of the JavaScript client (js/). Test-only
// and never released: the replace below points at the tree this module sits
// in.
module github.com/wsroom/wsroom/js/test/server

go 1.26.0

replace github.com/wsroom/wsroom => ../../..

require github.com/wsroom/wsroom v0.2.0

require github.com/coder/websocket v1.8.15 // indirect
