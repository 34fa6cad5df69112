// Package protocoltest checks a server of the wsroom protocol of many rooms
// (PROTOCOL.md, subprotocol wsroom.v3) from the outside, as a client sees
// it. Any implementation can run it against a URL:
//
//	func TestProtocol(t *testing.T) {
//		srv := httptest.NewServer(myHandler)
//		defer srv.Close()
//		protocoltest.Run(t, "ws"+strings.TrimPrefix(srv.URL, "http"), protocoltest.Config{
//			ServerPublish: func(ctx context.Context, room string, data []byte) error { ... },
//		})
//	}
//
// Run runs one subtest per claim of PROTOCOL.md, named after its section
// and the claim ("1.1/SubprotocolRequired", "3.2/JoinedPositionBusy", ...),
// so that -run selects them. The kit reads the server's limits from the
// hello frame; Config tells it what it cannot discover, such as how server
// code publishes to a room. A subtest that needs something the Config or
// the limits do not give skips, saying why.
//
// The kit waits for events (a reply, a message, a close), each for at most
// Config.Wait; it asserts nothing about how long the server takes. It uses
// room names of its own, unique to each Run, valid under the default room
// name rule, so one server can serve several runs. It assumes the rate
// limit throttles (the default) rather than closes.
package protocoltest
