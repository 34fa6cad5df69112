package main

import (
	"context"
	"slices"
	"sync"

	"github.com/wsroom/wsroom"
)

// A connection of many rooms publishes what the page sends as it is: the
// wsroom.v2 endpoint has no message hook. The chat checks and signs
// messages in the Broker instead, which every publish goes through on the
// node of its sender (who is connected there, so the node knows its name).
// Messages from other nodes arrive signed by theirs.

// stamp wraps b so that what pages publish is checked and signed (see
// Server.check). The result is a Sequencer, so that acks carry positions,
// and a Presence when b is one.
func (s *Server) stamp(b wsroom.Broker) wsroom.Broker {
	sb := &stampBroker{Broker: b, s: s}
	if p, ok := b.(wsroom.Presence); ok {
		return &stampPresence{stampBroker: sb, Presence: p}
	}
	return sb
}

type stampBroker struct {
	wsroom.Broker
	s *Server
}

func (b *stampBroker) Publish(ctx context.Context, room string, m wsroom.Message) error {
	out := b.s.check(room, m)
	if out == nil {
		return nil
	}
	if !out.Ephemeral {
		b.s.roomUsed(ctx, room)
	}
	return b.Broker.Publish(ctx, room, *out)
}

// PublishSeq publishes like Publish. A dropped message is answered as if it
// were ephemeral: an ack without a position.
func (b *stampBroker) PublishSeq(ctx context.Context, room string, m wsroom.Message) (wsroom.Message, error) {
	out := b.s.check(room, m)
	if out == nil {
		m.Seq, m.Epoch = 0, ""
		return m, nil
	}
	if !out.Ephemeral {
		b.s.roomUsed(ctx, room)
	}
	if seq, ok := b.Broker.(wsroom.Sequencer); ok {
		return seq.PublishSeq(ctx, room, *out)
	}
	return *out, b.Broker.Publish(ctx, room, *out)
}

type stampPresence struct {
	*stampBroker
	wsroom.Presence
}

// roomIndex remembers the rooms this process published numbered messages
// in, for the lobby.
type roomIndex struct {
	mu    sync.Mutex
	rooms map[string]bool
}

// add records room; it reports whether it is new.
func (x *roomIndex) add(room string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.rooms[room] {
		return false
	}
	x.rooms[room] = true
	return true
}

// roomUsed records that a message is published in room, and tells
// Options.RoomUsed the first time.
func (s *Server) roomUsed(ctx context.Context, room string) {
	if s.index.add(room) && s.opts.RoomUsed != nil {
		if err := s.opts.RoomUsed(ctx, room); err != nil {
			s.opts.Logger.Warn("chat: record room", "room", room, "err", err)
		}
	}
}

// names returns the rooms published in, sorted.
func (x *roomIndex) names() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	names := make([]string, 0, len(x.rooms))
	for r := range x.rooms {
		names = append(names, r)
	}
	slices.Sort(names)
	return names
}

// Store returns the Store the wrapped Broker numbers messages in, when it
// says, so that the Registry can check it is the chat's.
func (b *stampBroker) Store() wsroom.Store {
	switch x := b.Broker.(type) {
	case interface{ Store() wsroom.Store }:
		return x.Store()
	case wsroom.Store:
		return x
	}
	return nil
}
