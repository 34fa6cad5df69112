package redisbroker

import "strings"

// slot returns the Redis Cluster hash slot of key: the CRC16 of its hash
// tag (the text between its first "{" and the first "}" after it, when
// not empty) or of the whole key, modulo 16384.
func slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % 16384)
}

// crc16 is CRC-16/XMODEM, the checksum of Redis Cluster's key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// prefixKeepsSlot reports whether every key and the channel of a room, all
// "prefix{room}..." (see Broker.keys), hash to one slot with this prefix.
// Redis hashes the text between a key's first "{" and the first "}" after
// it: when the prefix holds no "{", that is the room's name (up to a "}"
// in it), the same in all the room's keys; when it holds one, the tag
// starts in the prefix and ends at the latest at the "}" after the room's
// name, again the same in all of them, unless it is empty: a prefix whose
// first "{" is followed at once by "}". (The tag is empty too for a room
// whose name is empty or starts with "}", when the prefix holds no "{":
// the publishes of such a room on a cluster fail with a CROSSSLOT error.)
// A prefix with a non-empty tag of its own puts every room in one slot,
// hence on one master.
func prefixKeepsSlot(prefix string) bool {
	i := strings.IndexByte(prefix, '{')
	return i < 0 || i+1 >= len(prefix) || prefix[i+1] != '}'
}
