package wsroom_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wsroom/wsroom"
)

// ErrUnavailable is the leave reason both of a client whose message the
// Broker did not take and of one whose new room's Store could not be read:
// its text names both engines, and no message in particular.
func TestErrUnavailableText(t *testing.T) {
	s := wsroom.ErrUnavailable.Error()
	for _, want := range []string{"broker", "store"} {
		if !strings.Contains(s, want) {
			t.Errorf("ErrUnavailable is %q: it does not name the %s", s, want)
		}
	}
	if strings.Contains(s, "not published") {
		t.Errorf("ErrUnavailable is %q: a client closed because the Store failed published nothing", s)
	}
}

// New refuses, with a panic that names it, each option that serves a
// Registry only, as it refuses a Store the Broker does not number messages
// in; NewRegistry takes them all, and New the options a lone Room uses.
func TestNewRefusesRegistryOptions(t *testing.T) {
	registryOnly := map[string]wsroom.Option{
		"WithIdleTimeout":       wsroom.WithIdleTimeout(time.Hour),
		"WithNameValidator":     wsroom.WithNameValidator(wsroom.ValidRoomName),
		"WithMaxRooms":          wsroom.WithMaxRooms(5),
		"WithJoinCheck":         wsroom.WithJoinCheck(func(*wsroom.Client, string) error { return nil }),
		"WithMaxRoomsPerClient": wsroom.WithMaxRoomsPerClient(5),
		"WithPresenceEvents":    wsroom.WithPresenceEvents(10),
		"WithOnRoomJoin":        wsroom.WithOnRoomJoin(func(*wsroom.Client, *wsroom.Room) {}),
		"WithOnRoomLeave":       wsroom.WithOnRoomLeave(func(*wsroom.Client, *wsroom.Room, string) {}),
		"WithOnPublish":         wsroom.WithOnPublish(func(_ *wsroom.Client, _ *wsroom.Room, b []byte) ([]byte, error) { return b, nil }),
	}
	common := []wsroom.Option{
		wsroom.WithCodec(wsroom.JSON()), wsroom.WithHistory(5), wsroom.WithPing(0, 0),
		wsroom.WithOnMessage(func(*wsroom.Client, []byte) error { return nil }),
		wsroom.WithSubprotocols("chat.v1"), wsroom.WithMaxClients(3),
	}
	newRoom := func(opts ...wsroom.Option) (msg string) {
		defer func() {
			if p := recover(); p != nil {
				msg = fmt.Sprint(p)
			}
		}()
		wsroom.New(opts...).Close()
		return ""
	}
	for name, opt := range registryOnly {
		msg := newRoom(append(slices.Clone(common), opt)...)
		if msg == "" {
			t.Errorf("New(%s) did not panic: a lone Room would ignore the option", name)
			continue
		}
		if !strings.Contains(msg, name) || !strings.Contains(msg, "NewRegistry") {
			t.Errorf("New(%s) panicked with %q, want the option's name and NewRegistry", name, msg)
		}
	}
	if msg := newRoom(wsroom.WithMaxRooms(1), wsroom.WithOnPublish(nil)); !strings.Contains(msg, "WithMaxRooms, WithOnPublish") {
		t.Errorf("New(WithMaxRooms, WithOnPublish) panicked with %q, want both names", msg)
	}
	if msg := newRoom(common...); msg != "" {
		t.Errorf("New with the options of a lone Room panicked: %s", msg)
	}
	all := slices.Clone(common)
	for _, opt := range registryOnly {
		all = append(all, opt)
	}
	wsroom.NewRegistry(all...).Close() // must not panic
}
