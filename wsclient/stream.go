package wsclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// StatusResync is the close code of a server of one room per connection
// that cannot give the client every message after its position, the same
// as wsroom.StatusResync.
const StatusResync websocket.StatusCode = 4000

// Stream is a connection to one room of a server of one room per
// connection with the JSON codec (wsroom.Room.Handler,
// wsroom.Registry.Handler), made by DialStream and reconnected whenever it
// is lost until Close, resuming after the last message it took with the
// "resume" URL parameter. That mode has no acks: Send sends a message
// once, and the server's close code 1013 (a message it could not publish)
// only makes the Stream reconnect.
//
// A Stream is safe for concurrent use; its messages are meant for one
// reader at a time (Next or Messages), each message going to one of them.
type Stream struct {
	cfg    config
	url    *neturl.URL
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	buf    buffer
	closed bool
	conn   *websocket.Conn
	epoch  string // position of the last message taken
	seq    uint64
	hasPos bool
	behind bool          // the buffer filled up: disconnected until it empties
	caught chan struct{} // closed when it empties, if behind
}

// DialStream connects to the room at url (ws:// or wss://), resuming from
// the url's "resume" parameter if it has one, and returns a Stream of its
// messages. The first handshake is made before DialStream returns,
// bounded by ctx, and its failure is DialStream's error; later ones, after
// a lost connection, are made in the background with backoff
// (WithBackoff), with the resume parameter of the last message taken.
//
// When the server closes with StatusResync, Next returns a *ResyncError and
// the Stream reconnects: from the start of the room's new epoch if the
// close reason ends in "resume=EPOCH:0", else without resume (the room then
// sends its recent history if it is configured to). A reader that falls
// more than WithBuffer messages behind makes the Stream disconnect until it
// has read them, then resume. A Stream that has taken no numbered message
// reconnects without resume, and misses what was published meanwhile
// unless the room sends history on join.
func DialStream(ctx context.Context, url string, opts ...Option) (*Stream, error) {
	u, err := neturl.Parse(url)
	if err != nil {
		return nil, err
	}
	s := &Stream{cfg: newConfig(opts), url: u}
	s.buf = newBuffer(&s.mu, func() {
		if s.behind {
			s.behind = false
			close(s.caught)
		}
	})
	if p := u.Query().Get("resume"); p != "" {
		s.epoch, s.seq, s.hasPos = parsePos(p)
	}
	conn, err := dial(ctx, &s.cfg, url, "")
	if err != nil {
		return nil, err
	}
	s.conn = conn
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Go(func() {
		err := reconnector(s.ctx, &s.cfg, conn, s.redial, s.serve)
		s.mu.Lock()
		if err != nil {
			s.closed = true
			s.buf.endLocked(err)
		}
		s.mu.Unlock()
		s.cfg.report(err)
	})
	return s, nil
}

// parsePos parses "EPOCH:SEQ".
func parsePos(p string) (epoch string, seq uint64, ok bool) {
	i := strings.LastIndexByte(p, ':')
	if i < 1 {
		return "", 0, false
	}
	seq, err := strconv.ParseUint(p[i+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return p[:i], seq, true
}

// redial waits for the reader to catch up, if it is behind, and dials
// again with the position of the last message taken.
func (s *Stream) redial(ctx context.Context) (*websocket.Conn, error) {
	s.mu.Lock()
	caught := s.caught
	behind := s.behind
	s.mu.Unlock()
	if behind {
		select {
		case <-caught:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.mu.Lock()
	u := *s.url
	q := u.Query()
	if s.hasPos {
		q.Set("resume", s.epoch+":"+strconv.FormatUint(s.seq, 10))
	} else {
		q.Del("resume")
	}
	s.mu.Unlock()
	u.RawQuery = q.Encode()
	return dial(ctx, &s.cfg, u.String(), "")
}

// envelope is a message as the JSON codec sends it.
type envelope struct {
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	Time  int64           `json:"time"`
	From  string          `json:"from"`
	Data  json.RawMessage `json:"data"`
}

// serve reads one connection until it ends.
func (s *Stream) serve(conn *websocket.Conn) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.CloseNow()
		return nil
	}
	s.conn = conn
	s.mu.Unlock()
	var err error
	for {
		var b []byte
		if _, b, err = conn.Read(s.ctx); err != nil {
			break
		}
		var e envelope
		if json.Unmarshal(b, &e) != nil {
			continue
		}
		s.mu.Lock()
		full := s.takeLocked(&e)
		s.mu.Unlock()
		if full {
			err = errBehind
			break
		}
	}
	conn.CloseNow()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn = nil
	if s.closed {
		return nil
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) && ce.Code == StatusResync {
		s.hasPos = false
		if i := strings.LastIndex(ce.Reason, "resume="); i >= 0 {
			s.epoch, s.seq, s.hasPos = parsePos(ce.Reason[i+len("resume="):])
		}
		s.buf.pushLocked(item{err: &ResyncError{Reason: ce.Reason}})
	}
	return fmt.Errorf("wsclient: connection lost: %w", err)
}

var errBehind = errors.New("wsclient: the reader fell behind; disconnected until it catches up")

// takeLocked takes a message; it reports true if the buffer is full.
func (s *Stream) takeLocked(e *envelope) bool {
	if e.Seq != 0 && s.hasPos && e.Epoch == s.epoch && e.Seq <= s.seq {
		return false // had it
	}
	if s.buf.nmsgs >= s.cfg.buffer {
		if e.Seq == 0 {
			return false // ephemeral: dropped
		}
		s.behind = true
		s.caught = make(chan struct{})
		return true
	}
	m := Message{Epoch: e.Epoch, Seq: e.Seq, From: e.From, Data: e.Data}
	if e.Time != 0 {
		m.Time = time.UnixMilli(e.Time)
	}
	if e.Seq != 0 {
		s.epoch, s.seq, s.hasPos = e.Epoch, e.Seq, true
	}
	s.buf.pushLocked(item{msg: m})
	return false
}

// Next returns the room's next message, waiting for one until ctx is done.
// It returns a *ResyncError, without ending the Stream, when the server
// closed with StatusResync; and, once the Stream has ended and its
// buffered messages are read, the error that ended it (ErrClosed, a
// *DialError) at every call.
func (s *Stream) Next(ctx context.Context) (Message, error) { return s.buf.next(ctx) }

// Messages returns an iterator over the room's messages, as Next returns
// them: a *ResyncError is yielded and the iteration goes on; any other
// error is yielded last.
func (s *Stream) Messages(ctx context.Context) iter.Seq2[Message, error] {
	return messages(ctx, s.Next)
}

// Send sends data, which must be JSON, to the room over the current
// connection, bounded by ctx (if ctx ends during the write, the connection
// is closed and reconnected). Without a connection it returns
// ErrDisconnected; it is never sent again.
func (s *Stream) Send(ctx context.Context, data []byte) error {
	if !json.Valid(data) {
		return errors.New("wsclient: send of data that is not JSON")
	}
	s.mu.Lock()
	conn, closed := s.conn, s.closed
	s.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case conn == nil:
		return ErrDisconnected
	}
	return conn.Write(ctx, websocket.MessageText, data)
}

// Done returns a channel closed when the Stream has ended: closed, or
// refused for good by the server (see DialError).
func (s *Stream) Done() <-chan struct{} { return s.buf.done }

// Err returns why the Stream ended (ErrClosed after Close, or a
// *DialError), or nil while it runs.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.err
}

// Close closes the connection with 1000 (normal closure) and stops
// reconnecting; the reader gets ErrClosed once the buffer is read. It
// returns once every goroutine of the Stream has ended.
func (s *Stream) Close() error {
	s.mu.Lock()
	conn := s.conn
	first := !s.closed
	s.closed = true
	s.mu.Unlock()
	if first && conn != nil {
		conn.Close(websocket.StatusNormalClosure, "")
	}
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	s.buf.endLocked(ErrClosed)
	s.mu.Unlock()
	return nil
}
