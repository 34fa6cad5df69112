package main

import (
	"context"
	"slices"
	"sync"
	"time"
)

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

// roomUsed records that a message is published in room, and tells
// Options.RoomUsed the first time, within 5 seconds.
func (s *Server) roomUsed(room string) {
	if !s.index.add(room) || s.opts.RoomUsed == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.opts.RoomUsed(ctx, room); err != nil {
		s.opts.Logger.Warn("chat: record room", "room", room, "err", err)
	}
}
