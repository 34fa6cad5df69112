package redisbroker

import (
	"testing"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
)

// Connections of many rooms on two nodes (brokertest.RunNodes); a node is
// cut off by killing its pub/sub connection from Redis' side and holding
// its reconnection back.
func TestNodes(t *testing.T) {
	brokertest.RunNodes(t, brokertest.Nodes{
		New: func(t *testing.T, limit int) wsroom.Broker {
			return newBroker(t, WithHistoryLimit(limit))
		},
		Cuttable: func(t *testing.T, limit int) (wsroom.Broker, func(), func()) {
			g := newGatedClient(t, redisAddr(), "wsroom-test-cut-"+newEpoch()[:10])
			b := New(g.client, WithMaxAge(testMaxAge), WithHistoryLimit(limit))
			t.Cleanup(func() { b.Close() })
			cut := func() {
				g.hold()
				g.killPubSub(t)
			}
			return b, cut, g.release
		},
	})
}
