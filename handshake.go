package wsroom

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// This file holds the handshake: every check a request passes before a room
// is made or joined, then the upgrade.

// HTTPError is an error an authorize hook, or a join check of
// Registry.Handler (see WithJoinCheck), returns to refuse a handshake with a
// given HTTP status, such as 401 or 403.
type HTTPError struct {
	Code    int    // HTTP status code
	Message string // response body; http.StatusText(Code) if empty
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("wsroom: handshake refused: %d %s", e.Code, e.text())
}

func (e *HTTPError) text() string {
	if e.Message != "" {
		return e.Message
	}
	return http.StatusText(e.Code)
}

var (
	errFull         = errors.New("wsroom: room is full")
	errTooManyRooms = errors.New("wsroom: too many rooms")
	// errTooManyNewRooms refuses a room a client would make beyond a cap
	// of WithMaxNewRooms.
	errTooManyNewRooms = errors.New("wsroom: too many new rooms: the connection or its identity made as many rooms as it may; join one that exists, or try again once one has closed")
)

// serveClient runs the handshake checks, upgrades, and serves the client on
// the room that acquire reserves a place in for the client (its
// identity; the connection makes one room at most). If check is not nil,
// it runs last, with the client to be (see joinCheck). acquire runs only
// once every check has passed, so that no request that will be refused
// makes a room; if the upgrade still fails, abandon gives the place back.
func serveClient(cfg *config, w http.ResponseWriter, req *http.Request, check func(*Client) error, acquire func(maker) (*Room, error), abandon func(*Room)) {
	identity, resume, ok := checkRequest(cfg, w, req, cfg.subprotocols, false)
	if !ok {
		return
	}
	var id string
	if check != nil {
		id = newID()
		// The client to be has no connection: it starts no goroutine
		// (writing, stopped), so that a check that calls Close harms
		// nothing.
		pre := &Client{id: id, identity: identity, ctx: req.Context(), writing: true, stopped: true}
		if err := check(pre); err != nil {
			refuse(w, err)
			return
		}
	}
	r, err := acquire(makerOf("", identity))
	if err != nil {
		w.Header().Set("Retry-After", "1")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	hw := &hijackWriter{ResponseWriter: w, timeout: r.cfg.writeTimeout}
	conn, err := websocket.Accept(hw, req, acceptOptions(cfg, cfg.subprotocols))
	if err != nil {
		abandon(r)
		r.cfg.logger.Debug("wsroom: handshake failed", "room", r.name, "err", err)
		return
	}
	c := newClient(r, conn, hw.conn, identity, resume)
	if id != "" {
		c.id = id // the ID the join check saw
	}
	// The client runs on its own goroutine, so that the handler returns and
	// net/http lets go of the request and its buffers.
	go c.serve()
}

// refuse answers a handshake that a hook refused with err: an *HTTPError
// with its status and message, a hook's panic with 500, any other error
// with 403 and the error's text.
func refuse(w http.ResponseWriter, err error) {
	var he *HTTPError
	var hp *hookPanic
	switch {
	case errors.As(err, &he):
		http.Error(w, he.text(), he.Code)
	case errors.As(err, &hp):
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
	default:
		http.Error(w, err.Error(), http.StatusForbidden)
	}
}

// checkRequest runs every check of a handshake, in order, the authorize
// hook last, and answers a request that fails one. The handshake must offer
// one of protos if it offers any subprotocol, or always if required (see
// checkSubprotocol). It returns the client's identity and resume position.
func checkRequest(cfg *config, w http.ResponseWriter, req *http.Request, protos []string, required bool) (identity any, resume *position, ok bool) {
	if !headerHas(req.Header, "Connection", "upgrade") || !headerHas(req.Header, "Upgrade", "websocket") {
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "wsroom: this endpoint speaks WebSocket only", http.StatusUpgradeRequired)
		return nil, nil, false
	}
	if err := checkHandshake(req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, nil, false
	}
	if err := checkSubprotocol(req, protos, required); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, nil, false
	}
	if err := checkOrigin(req, cfg.origins, cfg.originCheck); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return nil, nil, false
	}
	resume, err := parseResume(req.URL.Query().Get("resume"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, nil, false
	}
	if cfg.authorize != nil {
		identity, err = cfg.authorize(req)
		if err != nil {
			var he *HTTPError
			if errors.As(err, &he) {
				http.Error(w, he.text(), he.Code)
			} else {
				http.Error(w, http.StatusText(http.StatusForbidden), http.StatusForbidden)
			}
			return nil, nil, false
		}
	}
	return identity, resume, true
}

// checkHandshake checks what websocket.Accept would refuse with 400, so
// that such a request is refused before a room is made for it.
func checkHandshake(req *http.Request) error {
	if req.Method != http.MethodGet {
		return errors.New("wsroom: WebSocket handshake must use GET")
	}
	if v := req.Header.Get("Sec-WebSocket-Version"); v != "13" {
		return fmt.Errorf("wsroom: unsupported WebSocket version %q, want 13", v)
	}
	key := req.Header.Values("Sec-WebSocket-Key")
	if len(key) != 1 {
		return errors.New("wsroom: WebSocket handshake needs one Sec-WebSocket-Key")
	}
	if b, err := base64.StdEncoding.DecodeString(key[0]); err != nil || len(b) != 16 {
		return errors.New("wsroom: bad Sec-WebSocket-Key")
	}
	return nil
}

// checkOrigin refuses a cross-origin request whose origin matches none of
// patterns, as websocket.Accept does, and that check (if not nil) does not
// allow, before the authorize hook runs.
func checkOrigin(req *http.Request, patterns []string, check func(*http.Request) bool) error {
	origin := req.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil {
		return fmt.Errorf("wsroom: bad Origin header %q", origin)
	}
	if strings.EqualFold(req.Host, u.Host) {
		return nil
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, err := path.Match(strings.ToLower(p), strings.ToLower(target)); err == nil && ok {
			return nil
		}
	}
	if check != nil && check(req) {
		return nil
	}
	return fmt.Errorf("wsroom: origin %q not allowed", origin)
}

func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// position is a place in a room's history a client resumes after.
type position struct {
	epoch string
	seq   uint64
}

func (p position) String() string { return p.epoch + ":" + strconv.FormatUint(p.seq, 10) }

var errBadResume = errors.New(`wsroom: bad resume parameter: want "EPOCH:SEQ" as sent in message envelopes`)

func parseResume(s string) (*position, error) {
	if s == "" {
		return nil, nil
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || i > 128 {
		return nil, errBadResume
	}
	seq, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil || (i == 0 && seq != 0) {
		return nil, errBadResume // ":0" alone may name no epoch
	}
	return &position{epoch: s[:i], seq: seq}, nil
}

// hijackWriter wraps the ResponseWriter given to websocket.Accept so that the
// hijacked connection is a frameConn with small buffers.
type hijackWriter struct {
	http.ResponseWriter
	timeout time.Duration // the room's write timeout
	conn    *frameConn
}

func (h *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// Framing is decided here, once per connection, from what the
	// handshake negotiated: without compression the room's frames go to the
	// socket as they are; with it, coder/websocket frames each message.
	framed := !strings.Contains(h.Header().Get("Sec-WebSocket-Extensions"), "permessage-deflate")
	fc := newFrameConn(nc, h.timeout, framed)
	h.conn = fc
	// Keep what the client sent right after its handshake.
	var r io.Reader = fc
	size := connReadBuffer
	n := brw.Reader.Buffered()
	if n > 0 {
		early, _ := brw.Reader.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(early)), fc)
		size = max(size, n)
	}
	br := bufio.NewReaderSize(r, size)
	if n > 0 {
		br.Peek(n)
	}
	return fc, bufio.NewReadWriter(br, bufio.NewWriterSize(fc, connWriteBuffer)), nil
}

// WriteHeaderNow writes the status and headers that WriteHeader set, for
// writers that hold them back until asked: Gin's WriteHeader only records
// the status, and coder/websocket calls WriteHeaderNow after
// WriteHeader(101) so that the 101 goes out before the connection is
// hijacked. Wrappers with an Unwrap method are looked through, as
// http.ResponseController does.
func (h *hijackWriter) WriteHeaderNow() {
	w := h.ResponseWriter
	for {
		switch t := w.(type) {
		case interface{ WriteHeaderNow() }:
			t.WriteHeaderNow()
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return
		}
	}
}
