package wsroom

import (
	"context"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// PublishOption changes how one message is published.
type PublishOption func(*publishConfig)

type publishConfig struct {
	ephemeral bool
	except    string
	from      string
	keep      func(*Client) bool
}

// Ephemeral publishes a message that gets no sequence number, is not stored
// and is never replayed, such as a typing indicator.
func Ephemeral() PublishOption {
	return func(p *publishConfig) { p.ephemeral = true }
}

// Except publishes a message to every client but c, on every node. Such a
// message is ephemeral.
func Except(c *Client) PublishOption {
	return func(p *publishConfig) { p.except, p.ephemeral = c.id, true }
}

// From marks a message as sent by c (Message.From), as if c had sent it.
func From(c *Client) PublishOption {
	return func(p *publishConfig) { p.from = c.id }
}

// Filter publishes a message only to the clients of this node for which keep
// returns true; keep runs on the publishing goroutine. Such a message is
// ephemeral and does not go through the Broker, so clients on other nodes
// never see it.
func Filter(keep func(c *Client) bool) PublishOption {
	return func(p *publishConfig) { p.keep, p.ephemeral = keep, true }
}

// Publish sends data to every client of the room, on every node. Unless an
// option makes it ephemeral, the message is numbered, stored in the room's
// history, and reaches every client in the same order as every other
// message. Publish checks data with the codec's Decode first, so that, say,
// a JSON room refuses what is not JSON, and a room of text frames refuses
// what is not valid UTF-8.
//
// Publish returns when the message is on its way, not when it has been
// written. With the default LocalBroker, when the room's loop is behind
// (more messages wait for it than its inbox holds), Publish waits for it,
// until ctx ends, so that an overload slows publishers instead of costing
// clients messages; a Broker across nodes never waits for the loop. It
// returns ErrClosed once the room is shutting down or closed,
// and the Broker's error if it could not take the message. data must not be
// modified afterwards.
func (r *Room) Publish(ctx context.Context, data []byte, opts ...PublishOption) error {
	var p publishConfig
	for _, o := range opts {
		o(&p)
	}
	data, err := r.check(data)
	if err != nil {
		return err
	}
	m := Message{Time: time.Now(), From: p.from, Except: p.except, Ephemeral: p.ephemeral, Data: data}
	if p.keep != nil {
		return r.publishLocal(m, p.keep)
	}
	return r.publish(ctx, m)
}

// check decodes a frame or a payload with the codec. In a room of text
// frames the payload must be valid UTF-8 whatever the codec says, so that
// no client's browser fails the connection over a frame it receives.
func (r *Room) check(data []byte) ([]byte, error) { return r.cfg.check(data) }

func (cfg *config) check(data []byte) ([]byte, error) {
	payload, err := cfg.codec.Decode(data)
	if err != nil {
		return nil, err
	}
	if cfg.codec.MessageType() == websocket.MessageText && !utf8.Valid(payload) {
		return nil, errInvalidUTF8
	}
	return payload, nil
}

// encode encodes m with the codec, refusing a text frame that is not valid
// UTF-8 (a codec's mistake).
func (r *Room) encode(m Message) ([]byte, error) {
	b, err := r.cfg.codec.Encode(m)
	if err != nil {
		return nil, err
	}
	if r.cfg.codec.MessageType() == websocket.MessageText && !utf8.Valid(b) {
		return nil, errInvalidUTF8
	}
	return b, nil
}

func (r *Room) publish(ctx context.Context, m Message) error {
	if !r.isOpen() {
		return ErrClosed
	}
	return r.cfg.broker.Publish(ctx, r.name, m)
}

// publishSeq publishes m and returns it as numbered, when the Broker is a
// Sequencer; otherwise as it was. With a key, a Broker that is a
// Deduplicator publishes m only if no publish with that key was stored
// within its window, and returns that one's numbering if one was.
func (r *Room) publishSeq(ctx context.Context, m Message, key string) (Message, error) {
	if !r.isOpen() {
		return Message{}, ErrClosed
	}
	if d, ok := r.cfg.broker.(Deduplicator); ok && key != "" && !m.Ephemeral {
		out, _, err := d.PublishOnce(ctx, r.name, key, m)
		return out, err
	}
	if s, ok := r.cfg.broker.(Sequencer); ok {
		return s.PublishSeq(ctx, r.name, m)
	}
	return m, r.cfg.broker.Publish(ctx, r.name, m)
}

// publishLocal encodes m once and queues it to the local clients keep
// accepts.
func (r *Room) publishLocal(m Message, keep func(*Client) bool) error {
	if !r.isOpen() {
		return ErrClosed
	}
	if _, err := r.encode(m); err != nil {
		return err
	}
	fs := outFrames{r: r, m: m}
	for _, c := range r.Clients() {
		if keep(c) {
			c.deliver(&fs, false)
		}
	}
	return fs.err
}
