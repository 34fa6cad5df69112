package js_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/wsroom/wsroom/js"
)

func get(t *testing.T, h http.Handler, method string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, "/assets/wsroom.js", nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// The file served is the npm package's src/index.js, byte for byte.
func TestServesIndexJS(t *testing.T) {
	want, err := os.ReadFile("src/index.js")
	if err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, js.Handler(), http.MethodGet, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if !bytes.Equal(body, want) {
		t.Fatalf("served %d bytes that differ from src/index.js (%d bytes)", len(body), len(want))
	}
	if !bytes.Equal(js.Source(), want) {
		t.Fatal("Source differs from src/index.js")
	}
	for k, v := range map[string]string{
		"Content-Type":           "text/javascript; charset=utf-8",
		"X-Content-Type-Options": "nosniff",
		"Cache-Control":          "no-cache",
	} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	if got := resp.Header.Get("Content-Length"); got != strconv.Itoa(len(want)) {
		t.Errorf("Content-Length %q, want %d", got, len(want))
	}
	if !strings.Contains(string(body), "export function connect(") {
		t.Error("the client exports no connect function")
	}
}

// A browser that has the file gets 304 with its ETag, and the file again
// with another.
func TestETag(t *testing.T) {
	h := js.Handler()
	resp, _ := get(t, h, http.MethodGet, nil)
	tag := resp.Header.Get("ETag")
	if len(tag) < 3 || tag[0] != '"' || tag[len(tag)-1] != '"' {
		t.Fatalf("ETag %q, want a strong quoted tag", tag)
	}
	resp, body := get(t, h, http.MethodGet, http.Header{"If-None-Match": {tag}})
	if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
		t.Errorf("with its ETag: %d and %d bytes, want 304 and none", resp.StatusCode, len(body))
	}
	resp, body = get(t, h, http.MethodGet, http.Header{"If-None-Match": {`"older"`}})
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, js.Source()) {
		t.Errorf("with another ETag: %d and %d bytes, want 200 and the file", resp.StatusCode, len(body))
	}
}

func TestMethods(t *testing.T) {
	h := js.Handler()
	resp, body := get(t, h, http.MethodHead, nil)
	if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("Content-Type") != js.ContentType {
		t.Errorf("HEAD: %d, %d bytes, type %q", resp.StatusCode, len(body), resp.Header.Get("Content-Type"))
	}
	resp, _ = get(t, h, http.MethodPost, nil)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d, Allow %q; want 405 and GET, HEAD", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// Source returns a copy: changing it changes nothing served.
func TestSourceCopy(t *testing.T) {
	b := js.Source()
	b[0] ^= 0xff
	if _, body := get(t, js.Handler(), http.MethodGet, nil); body[0] == b[0] {
		t.Error("changing what Source returned changed the file served")
	}
}
