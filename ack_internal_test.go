package wsroom

import (
	"fmt"
	"testing"
)

// The ids of one room's publishes are kept apart from another's: a client
// sending many unique ids in one room evicts no entry of another room, and
// a room keeps its last acksPerRoom.
func TestAckCachePerRoom(t *testing.T) {
	var ac ackCache
	e, first := ac.begin("a", "ana", "keep")
	if !first {
		t.Fatal("first publish of an id is not first")
	}
	ac.finish(e, &reply{Op: "ack", ID: "keep"}, nil)
	for i := range 70_000 { // more than a registry-wide bound of 65,536 would hold
		e, _ := ac.begin("b", "bob", fmt.Sprint(i))
		ac.finish(e, &reply{Op: "ack"}, nil)
	}
	if _, first := ac.begin("a", "ana", "keep"); first {
		t.Error("room b's publishes evicted room a's id")
	}
	if _, first := ac.begin("a", "bob", "keep"); !first {
		t.Error("another sender's id suppressed bob's publish")
	}
	if got := len(ac.rooms["b"].order); got > acksPerRoom {
		t.Errorf("room b keeps %d ids, want at most %d", got, acksPerRoom)
	}
	if _, first := ac.begin("b", "bob", fmt.Sprint(70_000-1)); first {
		t.Error("room b forgot its newest id")
	}
	if _, first := ac.begin("b", "bob", "0"); !first {
		t.Error("room b kept its oldest id beyond its bound")
	}
}
