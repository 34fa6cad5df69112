package load

// A published message is printable ASCII, so every server passes it on as it
// is (text frames, valid UTF-8, no spaces to trim, no newline):
//
//	TTTTTTTTTTTTTTTT.SS.QQQQQQQQQQQQQQQQxxxx...
//
// T: the publish time in nanoseconds since the tool started, 16 hex digits;
// S: the step, 2 hex digits; Q: the sequence number, 16 hex digits; then
// 'x' up to the message size.
const (
	MinSize   = 36
	probeStep = 0xff // the step of probes, which check who is subscribed
)

const hexDigits = "0123456789abcdef"

var unhex = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := range 16 {
		t[hexDigits[i]] = byte(i)
	}
	for i := range 6 {
		t['A'+i] = byte(10 + i)
	}
	return t
}()

// EncodePayload fills p (at least MinSize bytes) with a message published at
// ts in step step with sequence number seq.
func EncodePayload(p []byte, ts int64, step int, seq uint64) {
	putHex(p[0:16], uint64(ts))
	p[16] = '.'
	putHex(p[17:19], uint64(step))
	p[19] = '.'
	putHex(p[20:36], seq)
	for i := MinSize; i < len(p); i++ {
		p[i] = 'x'
	}
}

func putHex(dst []byte, v uint64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = hexDigits[v&0xf]
		v >>= 4
	}
}

func getHex(src []byte) (uint64, bool) {
	var v uint64
	for _, c := range src {
		d := unhex[c]
		if d == 0xff {
			return 0, false
		}
		v = v<<4 | uint64(d)
	}
	return v, true
}

// DecodePayload returns the publish time, step and sequence number of a
// message made by EncodePayload.
func DecodePayload(p []byte) (ts int64, step int, seq uint64, ok bool) {
	if len(p) < MinSize || p[16] != '.' || p[19] != '.' {
		return 0, 0, 0, false
	}
	t, ok1 := getHex(p[0:16])
	s, ok2 := getHex(p[17:19])
	q, ok3 := getHex(p[20:36])
	if !ok1 || !ok2 || !ok3 {
		return 0, 0, 0, false
	}
	return int64(t), int(s), q, true
}

// decodeHead returns the publish time and step of a message made by
// EncodePayload, the part the readers need for every message.
func decodeHead(p []byte) (ts int64, step int, ok bool) {
	if len(p) < MinSize || p[16] != '.' || p[19] != '.' {
		return 0, 0, false
	}
	var v uint64
	var bad byte
	for _, c := range p[0:16] {
		d := unhex[c]
		bad |= d
		v = v<<4 | uint64(d&0xf)
	}
	s0, s1 := unhex[p[17]], unhex[p[18]]
	if (bad|s0|s1)&0xf0 != 0 {
		return 0, 0, false
	}
	return int64(v), int(s0)<<4 | int(s1), true
}
