package wsroom_test

import (
	"testing"

	"github.com/wsroom/wsroom"
	"github.com/wsroom/wsroom/brokertest"
	"github.com/wsroom/wsroom/storetest"
)

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) wsroom.Store { return wsroom.NewMemoryStore(100, 0) })
}

func TestLocalBrokerConformance(t *testing.T) {
	brokertest.Run(t, func() func(*testing.T) wsroom.Broker {
		var b *wsroom.LocalBroker
		return func(t *testing.T) wsroom.Broker {
			if b == nil {
				b = wsroom.NewLocalBroker(wsroom.NewMemoryStore(0, 0))
			}
			return b
		}
	}())
}
