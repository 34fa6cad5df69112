package main

// static/wsroom.js is the JavaScript client of the wsroom.v2 protocol,
// js/src/index.js, copied here because //go:embed cannot reach outside the
// module. TestClientCopy fails when the copy is out of date.
//go:generate cp ../../js/src/index.js static/wsroom.js
