package protocoltest_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/protocoltest"
)

// serve serves a Registry made with opts over loopback and returns the URL
// of its MuxHandler and a Config publishing through it.
func serve(t *testing.T, opts ...wsroom.Option) (string, protocoltest.Config) {
	t.Helper()
	reg := wsroom.NewRegistry(opts...)
	srv := httptest.NewServer(reg.MuxHandler())
	t.Cleanup(func() {
		srv.Close()
		reg.Close()
	})
	cfg := protocoltest.Config{
		ServerPublish: func(ctx context.Context, room string, data []byte) error {
			return reg.Publish(ctx, room, data)
		},
	}
	return "ws" + strings.TrimPrefix(srv.URL, "http"), cfg
}

// TestDefaults runs the kit against a Registry with its defaults, which
// hello must announce as PROTOCOL.md lists them.
func TestDefaults(t *testing.T) {
	url, cfg := serve(t)
	lim := protocoltest.DefaultLimits()
	cfg.Limits = &lim
	protocoltest.Run(t, url, cfg)
}

// TestSmallLimits runs the kit with limits small enough to be reached: few
// rooms per connection (pipelined joins get too_many_rooms), a rate limit
// that throttles within the kit's bursts, a small read limit and presence
// events with a small bound.
func TestSmallLimits(t *testing.T) {
	url, cfg := serve(t,
		wsroom.WithMaxRoomsPerClient(8),
		wsroom.WithRateLimit(100, 10, wsroom.Throttle),
		wsroom.WithReadLimit(4096),
		wsroom.WithPresenceEvents(2),
	)
	lim := protocoltest.DefaultLimits()
	lim.Rooms, lim.Rate, lim.Burst, lim.ReadLimit, lim.Presence = 8, 100, 10, 4096, 2
	cfg.Limits = &lim
	protocoltest.Run(t, url, cfg)
}

// TestCompression runs the kit with permessage-deflate on the server and
// offered by the kit's client, with rooms enough for every pipelined join.
func TestCompression(t *testing.T) {
	url, cfg := serve(t,
		wsroom.WithCompression(websocket.CompressionContextTakeover),
		wsroom.WithMaxRoomsPerClient(400),
		wsroom.WithMaxNewRooms(-1, -1),
		wsroom.WithRateLimit(0, 0, wsroom.Throttle),
	)
	cfg.Compression = websocket.CompressionContextTakeover
	cfg.RequireCompression = true
	protocoltest.Run(t, url, cfg)
}

// TestCompressionNotOffered runs the kit with permessage-deflate on the
// server and a client that offers none.
func TestCompressionNotOffered(t *testing.T) {
	url, cfg := serve(t, wsroom.WithCompression(websocket.CompressionContextTakeover))
	protocoltest.Run(t, url, cfg)
}

// TestPresenceByUser runs the kit against a Registry whose presence members
// are users; the kit's connections have no identity, so each is a user of
// its own, and the server behaves as the protocol says of any member.
func TestPresenceByUser(t *testing.T) {
	url, cfg := serve(t, wsroom.WithPresenceEvents(2), wsroom.WithPresenceByUser())
	lim := protocoltest.DefaultLimits()
	lim.Presence = 2
	cfg.Limits = &lim
	protocoltest.Run(t, url, cfg)
}
