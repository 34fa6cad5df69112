module github.com/wsroom/wsroom/bench

go 1.25

require (
	github.com/coder/websocket v1.8.15
	github.com/gorilla/websocket v1.5.3
	github.com/lxzan/gws v1.8.9
	github.com/olahol/melody v1.1.4
	github.com/wsroom/wsroom v0.5.0
	golang.org/x/image v0.30.0
)

require (
	github.com/dolthub/maphash v0.1.0 // indirect
	github.com/klauspost/compress v1.17.9 // indirect
)
