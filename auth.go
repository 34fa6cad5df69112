package wsroom

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/coder/websocket"
)

// This file holds what a handshake offers for authentication beyond the
// authorize hook: subprotocols (where browsers put credentials), an origin
// check of the application's own, and the close code of an expired
// credential.

// StatusExpired is the close code for a client whose credential expired
// while it was connected. wsroom never sends it by itself: the application
// closes the client with it when the identity the authorize hook returned
// runs out, for instance from a timer the join hook starts:
//
//	wsroom.WithOnJoin(func(c *wsroom.Client) {
//		s := c.Identity().(*session)
//		s.timer = time.AfterFunc(time.Until(s.expires), func() {
//			c.Close(wsroom.StatusExpired, "wsroom: credential expired")
//		})
//	}),
//	wsroom.WithOnLeave(func(c *wsroom.Client, _ error) {
//		if s := c.Identity().(*session); s.timer != nil { // nil if it never joined
//			s.timer.Stop()
//		}
//	}),
//
// Both hooks run on the client's own goroutine, so the timer needs no lock.
// Close writes what is already queued before the close frame. A client that
// gets 4001 should get a fresh credential before it reconnects, and may
// resume: nothing is lost. Both kinds of connection may be closed so; the
// code is the application's, not one of the wsroom.v3 protocol's.
const StatusExpired websocket.StatusCode = 4001

// WithSubprotocols sets the WebSocket subprotocols that Room.Handler and
// Registry.Handler speak, in order of preference: of those a client offers
// in Sec-WebSocket-Protocol, the handler selects the first in protos and
// Client.Subprotocol reports it. A handshake that offers subprotocols but
// none of protos gets 400 Bad Request, since a browser fails a connection
// whose server selects none of those it offered; one that offers none is
// served without a subprotocol. Later calls replace earlier ones. Default:
// none; the handlers select no subprotocol, whatever the client offers.
//
// Browsers cannot set headers on a WebSocket handshake, so a credential
// often travels as one more offered subprotocol, next to one the server
// speaks:
//
//	new WebSocket(url, ["chat.v1", "token." + token]) // token in base64url: a subprotocol is an HTTP token
//
// The authorize hook finds it with OfferedSubprotocols, and the handler
// selects "chat.v1": the server echoes only a protocol of protos, never the
// credential.
//
// Registry.MuxHandler does not use protos: it always selects Subprotocol,
// which the client must offer, and its clients send a credential next to
// it (["wsroom.v3", "token.XYZ"]) for the authorize hook to find the same
// way. So that the two handlers of one Registry never select the same
// subprotocol, WithSubprotocols panics if protos holds Subprotocol, or a
// name that is not an HTTP token (RFC 9110), which no client could offer.
func WithSubprotocols(protos ...string) Option {
	for _, p := range protos {
		if strings.EqualFold(p, Subprotocol) || strings.EqualFold(p, SubprotocolV2) {
			panic("wsroom: WithSubprotocols(" + p + "): " + p + " is a protocol of Registry.MuxHandler, which selects it by itself")
		}
		if !isToken(p) {
			panic(fmt.Sprintf("wsroom: WithSubprotocols(%q): a subprotocol is an HTTP token", p))
		}
	}
	protos = slices.Clone(protos)
	return func(cfg *config) { cfg.subprotocols = protos }
}

// OfferedSubprotocols returns the subprotocols a handshake request offers in
// its Sec-WebSocket-Protocol headers, in the order the client gave them.
// An authorize hook reads a credential a browser sent among them:
//
//	for _, p := range wsroom.OfferedSubprotocols(r) {
//		if token, ok := strings.CutPrefix(p, "token."); ok {
//			return verify(token)
//		}
//	}
func OfferedSubprotocols(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// WithOriginCheck sets a function that decides whether a cross-origin
// handshake may proceed, for origins WithOriginPatterns cannot describe
// (a list kept in a database, a Host rewritten by a proxy). The checks run
// in this order, and the first that allows the handshake ends them:
//
//  1. a request without an Origin header (not from a browser), or whose
//     Origin's host is the request's Host (same origin), is allowed;
//     fn is not called;
//  2. an origin that matches a pattern of WithOriginPatterns is allowed;
//     fn is not called;
//  3. fn is called, and the handshake is allowed if it returns true.
//
// Other handshakes, and those with an Origin header that is not a URL, get
// 403 Forbidden, before the authorize hook runs and before a Registry makes
// a room. So fn widens what is allowed and can never refuse a same-origin
// handshake; without it (the default), only same-origin handshakes and the
// patterns' origins are allowed. fn runs on the request's goroutine and
// may be called concurrently. A nil fn removes the check.
func WithOriginCheck(fn func(r *http.Request) bool) Option {
	return func(cfg *config) { cfg.originCheck = fn }
}

// Subprotocol returns the subprotocol the handshake selected: one of
// WithSubprotocols, Subprotocol for a connection of many rooms, or "" for
// none.
func (c *Client) Subprotocol() string { return c.conn.Subprotocol() }

// checkSubprotocol refuses a handshake that offers none of protos: when it
// offers any subprotocol, or always if required.
func checkSubprotocol(req *http.Request, protos []string, required bool) error {
	if len(protos) == 0 {
		return nil
	}
	offered := OfferedSubprotocols(req)
	if len(offered) == 0 && !required {
		return nil
	}
	for _, p := range protos {
		for _, o := range offered {
			if p == o {
				return nil
			}
		}
	}
	return fmt.Errorf("wsroom: the handshake offers none of the subprotocols this endpoint speaks: %s", strings.Join(protos, ", "))
}

// acceptOptions returns the options of websocket.Accept for a request that
// checkRequest passed with the same subprotocols.
func acceptOptions(cfg *config, protos []string) *websocket.AcceptOptions {
	return &websocket.AcceptOptions{
		Subprotocols: protos,
		// checkRequest has checked the origin (checkOrigin, which also
		// knows WithOriginCheck): Accept need not check it again.
		InsecureSkipVerify: true,
		CompressionMode:    cfg.compression,
	}
}

// isToken reports whether s is an HTTP token (RFC 9110, section 5.6.2).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// muxProtocols are the subprotocols of Registry.MuxHandler, the one it
// prefers first.
var muxProtocols = []string{Subprotocol, SubprotocolV2}

// muxProtocol returns the subprotocol Registry.MuxHandler selects for req,
// which checkSubprotocol passed: the newest version offered, matched
// exactly.
func muxProtocol(req *http.Request) string {
	offered := OfferedSubprotocols(req)
	for _, p := range muxProtocols {
		if slices.Contains(offered, p) {
			return p
		}
	}
	return Subprotocol
}
