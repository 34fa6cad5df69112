package wsroom_test

import (
	"strings"
	"testing"

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
