package wsroom

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
	"testing"
	"time"
)

// TestDefaultsInDocs checks that each option's documentation, and the
// package's list of defaults, state the value of the option's default
// constant: the constants are unexported, so the words are all a user
// sees, and they must not drift from the values.
func TestDefaultsInDocs(t *testing.T) {
	fset := token.NewFileSet()
	docs := map[string]string{}
	for _, file := range []string{"options.go", "doc.go"} {
		f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil {
			docs["package"] = oneLine(f.Doc.Text())
		}
		for _, d := range f.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok && fn.Doc != nil {
				docs[fn.Name.Name] = oneLine(fn.Doc.Text())
			}
		}
	}
	for _, tt := range []struct{ doc, want string }{
		{"WithSendBuffer", fmt.Sprintf("(default %d;", defaultSendBuffer)},
		{"WithReadLimit", fmt.Sprintf("(default %s;", kib(defaultReadLimit))},
		{"WithWriteTimeout", fmt.Sprintf("(default %s;", words(defaultWriteTimeout))},
		{"WithPing", fmt.Sprintf("(defaults %s and %s)", words(defaultPingInterval), words(defaultPongTimeout))},
		{"WithIdleTimeout", fmt.Sprintf("(default %s;", words(defaultIdleTimeout))},
		{"WithPublishRetry", fmt.Sprintf("(default %s;", words(defaultPublishRetry))},
		{"WithMaxRooms", fmt.Sprintf("(default %s;", count(defaultMaxRooms))},
		{"WithMaxRoomsPerClient", fmt.Sprintf("(default %d;", defaultMaxRoomsPerClient)},
		{"WithMaxNewRooms", fmt.Sprintf("(defaults %s and %s;", count(defaultMaxNewRoomsPerConn), count(defaultMaxNewRoomsPerIdentity))},
		{"WithRateLimit", fmt.Sprintf("The default is %d a second with bursts of %d and the Throttle policy", defaultRateLimit, defaultRateBurst)},

		{"package", fmt.Sprintf("send buffer %d messages per client", defaultSendBuffer)},
		{"package", fmt.Sprintf("read limit %s", kib(defaultReadLimit))},
		{"package", fmt.Sprintf("throttled to %d messages a second in bursts of %d", defaultRateLimit, defaultRateBurst)},
		{"package", fmt.Sprintf("write timeout %s", words(defaultWriteTimeout))},
		{"package", fmt.Sprintf("ping every %s with a %s pong timeout", words(defaultPingInterval), words(defaultPongTimeout))},
		{"package", fmt.Sprintf("publish retry %s", words(defaultPublishRetry))},
		{"package", fmt.Sprintf("at most %s rooms per Registry", count(defaultMaxRooms))},
		{"package", fmt.Sprintf("closed after %s without clients", words(defaultIdleTimeout))},
		{"package", fmt.Sprintf("at most %d rooms per connection of many rooms", defaultMaxRoomsPerClient)},
		{"package", fmt.Sprintf("memory history of %s messages per room for %s", count(DefaultHistoryLimit), words(DefaultHistoryAge))},
	} {
		if !strings.Contains(docs[tt.doc], tt.want) {
			t.Errorf("the documentation of %s does not say %q", tt.doc, tt.want)
		}
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// kib writes n bytes as the documentation does: "32 KiB".
func kib(n int) string { return fmt.Sprintf("%d KiB", n>>10) }

// count writes n as the documentation does: "10,000".
func count(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// words writes d as the documentation does: "10s", "one minute", "24 hours".
func words(d time.Duration) string {
	switch {
	case d == time.Minute:
		return "one minute"
	case d == time.Hour:
		return "one hour"
	case d%time.Hour == 0:
		return fmt.Sprintf("%d hours", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%d minutes", d/time.Minute)
	}
	return d.String()
}
