module github.com/wsroom/wsroom

go 1.25

require (
	github.com/coder/websocket v1.8.15
	github.com/google/go-cmp v0.7.0
)

require pgregory.net/rapid v1.3.0
